"""Text handling for speech: streaming segmentation and speech normalization."""
