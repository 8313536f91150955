"""The audit trail (issue 15 item 4): one FHIR R4 AuditEvent per /fhir request that reads or
writes PHI, kept in a file of its own, append-only, searchable at /fhir/AuditEvent.

- `events`: what a request was (interaction, entity, query, outcome) and its AuditEvent;
- `trail`: where the events are kept (`<data_dir>/audit.db`) and the writer thread;
- `middleware`: the ASGI middleware that observes each request and hands its event over.

The routes that search the trail and refuse writes to it are in `api/audit.py`.
"""
