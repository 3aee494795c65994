"""Accepting work: validate fully at the door, store it as an Operation, ask dispatch for a cycle.

From the moment an Operation row exists the request cannot be lost. A repeated (model, seq_id) or
(sampler, seq_id) returns the original operation (never a 409). These are the actions the API
views call; they import `dispatch`, never `execution`.
"""
