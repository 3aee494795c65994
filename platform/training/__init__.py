"""The training domain: one Django app (its models form one foreign-key graph), cut by stage.

    models, errors, access, wire, storage, events, base_models, test_hooks   shared facts, at the top
    intake/     accept work: validate at the door, store the Operation, quotas
    dispatch    pure database work: which cycle runs next (by actor name, never importing execution)
    execution/  run a cycle: plan, resident engines, outcomes, worker, middleware, Dramatiq actors
    upkeep/     chores between cycles: session expiry, checkpoint retention, releasing snapshots

The one import rule (tests/test_import_layers.py enforces it): intake and execution may import
dispatch; dispatch imports neither; only the actors and management commands import execution (the
views in api/ and front/ call intake and read models). Nothing at the top imports a stage.
"""
