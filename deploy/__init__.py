"""Use a trained model: a chat page (`deploy.chat`), exports to merged 16-bit / GGUF / Ollama
(`deploy.export`) and an OpenAI-compatible server (`deploy.serve`).

Entry points: `make chat`, `make export`, `make serve` (README, "Use the trained model").
"""
