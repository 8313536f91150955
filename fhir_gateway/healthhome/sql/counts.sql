-- What was read and what the list stands on, for the summary.
SELECT (SELECT count(*) FROM claims) AS claim_lines,
       (SELECT count(DISTINCT member_id) FROM members) AS members,
       (SELECT count(*) FROM member_facts) AS attributed,
       (SELECT count(*) FROM member_facts WHERE enrolled_program IS NOT NULL) AS enrolled
