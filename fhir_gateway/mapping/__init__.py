"""Source records (CIMOR, CyberAccess) -> FHIR resources, by declarative mappings in `mappings/`.

Modules, each importing only those before it: paths (source paths, `when:` conditions),
transforms (the generic ones, ConceptMaps), engine (templates compiled to closures: what a
mapping means, and what runs).
"""

from fhir_gateway.mapping.engine import (
                                         MappedResource,
                                         Mapping,
                                         merge_mapped,
                                         to_transaction,
                                         transaction_json,
)
from fhir_gateway.mapping.paths import MappingError

#: load, check and compile a mapping file (see Mapping.load)
load_mapping = Mapping.load

__all__ = ["MappedResource", "Mapping", "MappingError", "load_mapping", "merge_mapped",
           "to_transaction", "transaction_json"]
