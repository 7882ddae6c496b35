"""Current flagship models of each provider (the issue's audit), by their API names."""

FLAGSHIPS = (
    # OpenAI
    "gpt-5.4", "gpt-5.5", "gpt-5.5-pro", "gpt-5.6-sol", "gpt-5.6-terra", "gpt-5.6-luna",
    "gpt-6-sol", "gpt-6-luna", "gpt-6.1-sol", "gpt-6.1-terra", "gpt-5", "gpt-5-mini", "o3", "o4-mini",
    # Anthropic
    "claude-opus-4-7", "claude-opus-4-8", "claude-opus-5", "claude-opus-5-5", "claude-sonnet-4-5",
    "claude-sonnet-4-6", "claude-sonnet-5", "claude-sonnet-5-5", "claude-haiku-4-5", "claude-haiku-5-5",
    # Google
    "gemini-3-flash-preview", "gemini-3.1-pro-preview", "gemini-3.1-flash-lite", "gemini-3.5-flash",
    "gemini-3.8-flash", "gemini-4-argon", "gemini-2.5-pro", "gemini-2.5-flash",
    # xAI
    "grok-4.20", "grok-4.20-reasoning", "grok-4.20-non-reasoning", "grok-4.3", "grok-4.5", "grok-4.6",
    "grok-4.7",
    # Mistral (Mistral Large 3 is mistral-large-2512)
    "mistral-large-latest", "mistral-large-3", "mistral-large-2512", "mistral-large-4",
    "mistral-medium-latest", "mistral-medium-3-5", "codestral-latest",
    # DeepSeek
    "deepseek-v4-pro", "deepseek-v4-flash", "deepseek-chat", "deepseek-reasoner",
)
