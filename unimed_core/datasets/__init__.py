"""Public datasets in their own layouts → UniMed's mixed-level datalist (DESIGN.md §4).

One module per layout, as nnU-Net keeps one conversion script per dataset: :mod:`.msd` (Medical Segmentation
Decathlon), :mod:`.luna16`, :mod:`.totalsegmentator`, :mod:`.kits`; what they share (class mapping, boxes from
masks, splits, the datalist written) is in :mod:`.common`. ``unimed-prepare-dataset`` is the command line.
"""
