"""Serving: the Groq/OpenAI-compatible chat completions server and its benchmark client.
Imports runtime and everything upstream of it."""
