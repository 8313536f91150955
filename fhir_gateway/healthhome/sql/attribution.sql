-- Attribution: each member's provider is the one with the most visits (distinct service
-- days) in the look-back window among Health Home provider types (all types when the policy
-- lists none); a tie goes to the most recent visit, then to the lowest provider id.
WITH visits AS (
  SELECT member_id, provider_id, count(DISTINCT service_date) AS visits,
         max(service_date) AS last_visit
  FROM claims
  WHERE service_date >= ${window_start} AND service_date <= ${window_end}
    AND (${any_provider_type} OR provider_type IN (SELECT provider_type FROM hh_provider_types))
  GROUP BY member_id, provider_id
), ranked AS (
  SELECT member_id, provider_id, visits, last_visit,
         row_number() OVER (PARTITION BY member_id
                            ORDER BY visits DESC, last_visit DESC, provider_id) AS n
  FROM visits
)
SELECT member_id, provider_id, visits, last_visit FROM ranked WHERE n = 1
