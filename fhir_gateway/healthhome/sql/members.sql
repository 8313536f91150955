-- Member file rows, typed (one or more rows per member: person columns may be repeated or
-- given on one row; each coverage span is a row).
SELECT trim(CAST(m.member_id AS STRING)) AS member_id,
       nullif(trim(CAST(m.dcn AS STRING)), '') AS dcn,
       try_cast(substr(trim(CAST(m.birth_date AS STRING)), 1, 10) AS DATE) AS birth_date,
       nullif(trim(CAST(m.birth_date AS STRING)), '') AS birth_date_text,
       a.code AS state,
       nullif(trim(CAST(m.state AS STRING)), '') AS state_text,
       nullif(trim(CAST(m.coverage_type AS STRING)), '') AS coverage_type,
       try_cast(substr(trim(CAST(m.coverage_start AS STRING)), 1, 10) AS DATE) AS coverage_start,
       nullif(trim(CAST(m.coverage_start AS STRING)), '') AS coverage_start_text,
       try_cast(substr(trim(CAST(m.coverage_end AS STRING)), 1, 10) AS DATE) AS coverage_end,
       nullif(trim(CAST(m.coverage_end AS STRING)), '') AS coverage_end_text,
       nullif(trim(CAST(m.enrolled_program AS STRING)), '') AS enrolled_program
FROM members_in m
LEFT JOIN state_alias a ON a.name = upper(trim(CAST(m.state AS STRING)))
