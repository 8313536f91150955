-- How many rows of each input have an unusable required or typed value (0 everywhere: the
-- input is good). The runner names the first bad row of a field that is not 0.
SELECT 'claims' AS input, 'member_id' AS field,
       sum(CASE WHEN member_id IS NULL OR member_id = '' THEN 1 ELSE 0 END) AS bad FROM claims
UNION ALL
SELECT 'claims', 'service_date', sum(CASE WHEN service_date IS NULL THEN 1 ELSE 0 END) FROM claims
UNION ALL
SELECT 'claims', 'provider_id',
       sum(CASE WHEN provider_id IS NULL OR provider_id = '' THEN 1 ELSE 0 END) FROM claims
UNION ALL
SELECT 'members', 'member_id',
       sum(CASE WHEN member_id IS NULL OR member_id = '' THEN 1 ELSE 0 END) FROM members
UNION ALL
SELECT 'members', 'birth_date',
       sum(CASE WHEN birth_date_text IS NOT NULL AND birth_date IS NULL THEN 1 ELSE 0 END) FROM members
UNION ALL
SELECT 'members', 'state',
       sum(CASE WHEN state_text IS NOT NULL AND state IS NULL THEN 1 ELSE 0 END) FROM members
UNION ALL
SELECT 'members', 'coverage_start',
       sum(CASE WHEN coverage_start_text IS NOT NULL AND coverage_start IS NULL THEN 1 ELSE 0 END) FROM members
UNION ALL
SELECT 'members', 'coverage_end',
       sum(CASE WHEN coverage_end_text IS NOT NULL AND coverage_end IS NULL THEN 1 ELSE 0 END) FROM members
