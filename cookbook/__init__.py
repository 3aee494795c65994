"""Lorasmith's cookbook: renderers, data helpers and training recipes built on the public SDK only.

`renderers` turns chat messages into tokens with per-token training weights and back; `data` loads,
shuffles, splits, batches and streams data and builds Datums; `supervised`, `policy_gradient` and
`preference` are the training loops' parts (SFT steps, the GRPO-style loop, pair scores); `tasks`
and `evaluation` grade answers; `cookbook.recipes.*` are runnable recipes
(`python -m cookbook.recipes.sl --help`). Nothing here imports the server or the engine: it talks
to Lorasmith only through `lorasmith`, so it runs against any Lorasmith by its URL and API key.
"""
