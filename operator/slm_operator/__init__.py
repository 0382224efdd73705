"""slm-operator: reconciles SLMDeployments into model services."""
