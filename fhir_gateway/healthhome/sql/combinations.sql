-- The distinct combinations of facts among members not enrolled: the engine judges each once.
SELECT state, cat_mask, primary_mask, medicaid, chip, pediatric, count(*) AS members
FROM member_facts
WHERE enrolled_program IS NULL
GROUP BY state, cat_mask, primary_mask, medicaid, chip, pediatric
