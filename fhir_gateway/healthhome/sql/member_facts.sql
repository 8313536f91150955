-- One row per attributed member: the facts the eligibility rules read (categories and
-- primary-diagnosis categories as bit masks, Medicaid and CHIP coverage on the first day of
-- the month, pediatric) and whether an enrollment is already in force.
WITH person AS (
  SELECT member_id, max(dcn) AS dcn, max(state) AS state, max(birth_date) AS birth_date,
         max(enrolled_program) AS enrolled_program
  FROM members GROUP BY member_id
), covered AS (
  SELECT m.member_id,
         max(CASE WHEN k.medicaid THEN 1 ELSE 0 END) AS medicaid,
         max(CASE WHEN k.chip THEN 1 ELSE 0 END) AS chip
  FROM members m JOIN coverage_kind k ON k.code = m.coverage_type
  WHERE (m.coverage_start IS NULL OR m.coverage_start <= ${as_of})
    AND (m.coverage_end IS NULL OR m.coverage_end >= ${as_of})
  GROUP BY m.member_id
), dx AS (
  SELECT d.member_id, bit_or(cc.mask) AS cat_mask,
         bit_or(CASE WHEN d.principal THEN cc.mask ELSE CAST(0 AS BIGINT) END) AS primary_mask
  FROM member_dx d
  JOIN person p ON p.member_id = d.member_id
  JOIN code_category cc ON cc.code = d.code AND cc.state = p.state
  GROUP BY d.member_id
)
SELECT p.member_id, p.dcn, p.state,
       coalesce(dx.cat_mask, CAST(0 AS BIGINT)) AS cat_mask,
       coalesce(dx.primary_mask, CAST(0 AS BIGINT)) AS primary_mask,
       coalesce(c.medicaid, 0) = 1 AS medicaid,
       coalesce(c.chip, 0) = 1 AS chip,
       coalesce(p.birth_date > ${pediatric_after}, FALSE) AS pediatric,
       p.enrolled_program,
       a.provider_id, a.visits, a.last_visit
FROM person p
JOIN attribution a ON a.member_id = p.member_id
LEFT JOIN dx ON dx.member_id = p.member_id
LEFT JOIN covered c ON c.member_id = p.member_id
WHERE p.state IS NOT NULL
