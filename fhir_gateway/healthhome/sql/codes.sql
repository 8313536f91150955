-- The distinct diagnosis codes and coverage types: the engine maps each once.
SELECT 'diagnosis' AS kind, code FROM (SELECT DISTINCT code FROM member_dx) d
UNION ALL
SELECT 'coverage', coverage_type FROM (SELECT DISTINCT coverage_type FROM members
                                       WHERE coverage_type IS NOT NULL) c
