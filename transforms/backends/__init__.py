"""Model backends (ModelHandlers) for OCR, VLM captioning and LLM translation."""
