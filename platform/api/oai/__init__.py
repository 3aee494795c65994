"""OpenAI-compatible sampling of trained adapters at /oai/api/v1 (DESIGN §11): completions, chat
completions and the model list, in the shapes the official `openai` client parses. Each call is an
ordinary sample request through the SDK's intake (`training.intake.served_models`)."""
