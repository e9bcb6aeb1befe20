"""The resources' names (the board's source, the ground's CRDs and controller agree)."""

GROUP = "sortie.dev"
VERSION = "v1alpha1"
KIND = "MissionProfile"
PLURAL = "missionprofiles"
ROLLOUT_KIND = "MissionRollout"
ROLLOUT_PLURAL = "missionrollouts"
