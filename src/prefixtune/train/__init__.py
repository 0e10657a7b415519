"""Training and evaluation: a short, resumable loop on Hugging Face accelerate."""
