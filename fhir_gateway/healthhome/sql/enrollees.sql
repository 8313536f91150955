-- The lists: per provider, each member not enrolled who is eligible for a program, with the
-- rule and the diagnosis codes whose categories satisfied it, in a stable order.
SELECT DISTINCT f.provider_id, f.member_id, f.dcn, f.state, v.program, v.rule, d.code,
       f.visits, f.last_visit
FROM member_facts f
JOIN verdicts v
  ON v.state = f.state AND v.cat_mask = f.cat_mask AND v.primary_mask = f.primary_mask
 AND v.medicaid = f.medicaid AND v.chip = f.chip AND v.pediatric = f.pediatric
JOIN member_dx d ON d.member_id = f.member_id
JOIN code_category cc ON cc.code = d.code AND cc.state = f.state AND (cc.mask & v.basis_mask) <> 0
WHERE f.enrolled_program IS NULL
ORDER BY f.provider_id, f.member_id, v.program, d.code
