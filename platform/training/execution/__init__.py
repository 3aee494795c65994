"""Running cycles on a runner: plan each operation (`plan`), run the batch on the resident engine
(`engines`), write outcomes to the op log (`outcomes`), inside a Dramatiq worker (`worker`,
`middleware`, `actors`). Only the actors and the management commands import this package.
"""
