-- Each member's diagnosis codes on claim lines of the look-back window; the first code of a
-- line is its principal diagnosis (what the eligibility rules read as the primary one).
SELECT DISTINCT c.member_id,
       split_part(c.diagnosis_codes, ';', p.pos) AS code,
       p.pos = 1 AS principal
FROM claims c
JOIN positions p
  ON p.pos <= length(c.diagnosis_codes) - length(replace(c.diagnosis_codes, ';', '')) + 1
WHERE c.service_date >= ${window_start} AND c.service_date <= ${window_end}
  AND c.diagnosis_codes IS NOT NULL
  AND split_part(c.diagnosis_codes, ';', p.pos) <> ''
