"""The release half, free of Dagster: the model card a released model carries, and publishing an approved one."""
