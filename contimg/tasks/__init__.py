"""Celery tasks: thin wrappers that route, retry and record state.

The science lives in Celery-free modules (:mod:`contimg.convert`,
:mod:`contimg.imaging`); the tasks only move paths and small JSON payloads.
"""
