"""Fine-tuning on labels: learners behind one interface (base.py), a logistic head on frozen hidden
states (head.py) and LoRA through TRL (lora.py), the scalable search's fold scorer (folds.py), and
trained models saved with their provenance (saved.py)."""
