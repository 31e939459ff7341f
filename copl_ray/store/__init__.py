"""Durable state of a serving deployment: the onboarded-user store and its export to the dataset."""

from copl_ray.store.user_store import SCHEMA_VERSION, StoreSchemaError, UserExistsError, UserRecord, UserStore

__all__ = ["UserStore", "UserRecord", "UserExistsError", "StoreSchemaError", "SCHEMA_VERSION"]
