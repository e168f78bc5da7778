"""The store seam: everything that turns events into bytes and rows and back.

``recorders`` (eventsourcing's recorders per database, with the record-id index written in
the same transaction), ``chain`` (the tamper-evidence hash chain over the stored bytes) and
``cache`` (the two-tier aggregate cache). The domain and the engine never see bytes.
"""
