"""Launchers that put a stage worker on another machine through Dagster Pipes: a Kubernetes pod (``k8s``) or an
ECS task (``ecs``), both sized for the stage by ``sizing`` from the recipe and the memory estimate."""
