-- Runs once, on an empty data volume: MLflow's users and permissions live in their own database.
CREATE DATABASE mlflow_auth;
