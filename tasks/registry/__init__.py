"""Stage 5, register: MLflow runs, model versions with lineage tags, the gate, champion/challenger.

tracking    the one MLflow wrapper (one client per tracking URI): runs, params, metrics, artifacts
versions    register a run's model, tag it, alias it `challenger`, find and export the champion
gate        promote or not, and why
promotion   champion promotion, rollback and history, under a per-model lock
card        the model card (README.md next to the logged model)
serving     the served model: a pyfunc around the HF folder (MLflow models from code)
export      a version as a plain HF folder for serving engines (`alignflow export`)
"""
