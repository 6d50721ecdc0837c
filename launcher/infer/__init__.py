"""After training: chat, serve, eval/predict, the eval-generate callback, metrics, the demo."""
