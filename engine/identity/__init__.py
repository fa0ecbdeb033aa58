"""Face analysis: detection, landmarks, alignment, pose and identity embeddings, behind one interface."""
