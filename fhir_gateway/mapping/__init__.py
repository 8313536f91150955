"""Source records (CIMOR, CyberAccess) -> FHIR resources, by declarative mappings in `mappings/`."""

from fhir_gateway.mapping.engine import (
                                         MappedResource,
                                         Mapping,
                                         load_mapping,
                                         merge_mapped,
                                         to_transaction,
                                         transaction_json,
)
from fhir_gateway.mapping.paths import MappingError

__all__ = ["MappedResource", "Mapping", "MappingError", "load_mapping", "merge_mapped",
           "to_transaction", "transaction_json"]
