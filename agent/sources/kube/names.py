"""The MissionProfile resource's names (the board's source and the ground's CRD agree)."""

GROUP = "sortie.dev"
VERSION = "v1alpha1"
KIND = "MissionProfile"
PLURAL = "missionprofiles"
