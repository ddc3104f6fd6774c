"""Admission: who is calling (a virtual key → its tenant and policy) and which track a request takes."""
