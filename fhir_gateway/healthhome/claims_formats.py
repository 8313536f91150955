"""The potential-enrollee lists' input formats (README "Claims extract and member file"):
the columns of the claims extract and of the member file, and the error for input that does
not follow them. Apart so that both the lists and the FHIR conversion read one definition.
"""

from __future__ import annotations

#: the claims extract: name -> required
CLAIM_COLUMNS = {"member_id": True, "service_date": True, "provider_id": True,
                 "provider_type": False, "diagnosis_codes": True, "procedure_code": False}
#: the member file: name -> required
MEMBER_COLUMNS = {"member_id": True, "dcn": False, "birth_date": False, "state": True,
                  "coverage_type": False, "coverage_start": False, "coverage_end": False,
                  "enrolled_program": False}


class InputError(ValueError):
    """An input the lists cannot be computed from; the message names file, line and field."""
