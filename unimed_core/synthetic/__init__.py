"""Generated studies for tests and benchmarks, kept apart from the readers and writers of real scans (DESIGN.md §4).

:mod:`.case` draws one synthetic abdominal study, :mod:`.dataset` writes many with a mixed-level datalist
(``unimed-make-synthetic``), :mod:`.semi_synthetic` inserts lesions into real anatomy from installed atlases
(``unimed-make-semisynthetic``), and :mod:`.reproducible_nifti` writes NIfTI whose bytes depend only on content.
"""
