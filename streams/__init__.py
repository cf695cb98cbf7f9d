"""streamscore's Kafka side: the Faust app, its agents and the pipeline stages.

Read ``streams/scoring/agent.py`` for the path of an event, top to bottom.
"""
