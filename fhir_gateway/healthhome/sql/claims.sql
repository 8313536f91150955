-- Claim lines, typed. Every value passes through text first: a CSV gives text, a Parquet
-- file may give DATE or TIMESTAMP (whose text starts with the date). A value that does not
-- parse is NULL here; checks.sql counts them and the runner names the first.
SELECT trim(CAST(member_id AS STRING)) AS member_id,
       try_cast(substr(trim(CAST(service_date AS STRING)), 1, 10) AS DATE) AS service_date,
       trim(CAST(service_date AS STRING)) AS service_date_text,
       trim(CAST(provider_id AS STRING)) AS provider_id,
       upper(trim(CAST(provider_type AS STRING))) AS provider_type,
       upper(replace(replace(CAST(diagnosis_codes AS STRING), ' ', ''), ',', ';')) AS diagnosis_codes
FROM claims_in
