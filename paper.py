"""What the paper reports, in one place: the numbers our summaries and reports are shown beside.
WA and UA in %, IEMOCAP's four classes; each is one run of the authors."""

# Table 3, "Proposed": leave-one-session-out, the mean of the five folds.
TABLE3 = dict(wa=75.37, ua=76.04)

# Table 1: projection dropout of the 22 layers kept (Sec. 3.3 protocol: 5 epochs, tested on session 5).
TABLE1 = {0.0: (69.46, 70.66), 0.1: (69.94, 70.49), 0.2: (69.46, 70.41),
          0.3: (70.59, 70.61), 0.4: (70.99, 72.83), 0.5: (61.97, 67.35)}

# Table 2 (Sec. 3.4 protocol: 10 % validation, early stopping, tested on session 5): each row's
# pooling, mixup and center-loss weight lambda (Eq. 6), and its (WA, UA).
TABLE2 = [(dict(pooling="avg", mixup="none", center_weight=0.0), (70.91, 71.80)),
          (dict(pooling="first", mixup="none", center_weight=0.0), (70.99, 72.83)),
          (dict(pooling="first", mixup="conventional", center_weight=0.0), (70.83, 74.06)),
          (dict(pooling="first", mixup="adaptive", center_weight=0.0), (73.97, 75.03)),
          (dict(pooling="first", mixup="adaptive", center_weight=0.0005), (74.54, 76.20)),
          (dict(pooling="first", mixup="adaptive", center_weight=0.001), (74.21, 75.99)),
          (dict(pooling="first", mixup="adaptive", center_weight=0.002), (74.86, 76.31))]
