"""JCRA: joint coordinate regression and association for multi-person pose estimation."""
