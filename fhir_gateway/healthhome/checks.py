"""The Health Home checks the profiles cannot say, registered with the validation service.

A profile can make a Condition's category required but not say *which* category its
diagnosis allows; the IG's ConceptMap can (`categories.category_issues`; the seeds behind
each mapping are cited in the ConceptMap's comments, as data).
"""

from __future__ import annotations

from fhir_gateway.exchange.subscriptions import served
from fhir_gateway.healthhome.billing import check_monthly_claim
from fhir_gateway.healthhome.categories import category_issues
from fhir_gateway.validation.reads import FULL, Reads
from fhir_gateway.validation.service import ResourceCheck, StoreCheck, Validator, load_validator

CHECKS = (ResourceCheck("Condition", Reads({"code": FULL, "category": FULL}), category_issues),)
#: checks that read the store: an HH Monthly Claim's services, enrollment and month; a
#: Subscription the gateway can deliver (exchange/subscriptions.py)
STORE_CHECKS = (StoreCheck("Claim", check_monthly_claim), StoreCheck("Subscription", served))


def health_home_validator(package_dir: str | None, all_of_profiled_types: bool = False
                          ) -> Validator:
    """The gateway's validator: the IG package's profiles and the Health Home checks."""
    return load_validator(package_dir, all_of_profiled_types, CHECKS, STORE_CHECKS)
