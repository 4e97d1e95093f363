"""The ranking protocol every model is scored under: candidates, settings, metrics, and scoring a Scorer.

It sits below the models (they select on valid with it) and below the evaluation stage (which loads the
trained models and scores them with it); it imports neither.
"""
