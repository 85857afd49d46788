"""Built-in loggers (TensorBoard, MLflow): optional extras, imported only when a run enables them."""
