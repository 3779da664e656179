"""What every model family shares: data pipelines, parallel steps, state, checkpoints, the loop."""
