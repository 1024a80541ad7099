"""Accuracy on images our own forward model did not make: `deltamic fit` vs seeded watershed.

Every image here is made by code that shares nothing with ``deltamic_core.render`` (no mesh
Fourier transform, no OTF, no band):

1. truth meshes: the bundled 3-cell embryo (``Sample01_007.rec``, 0.25 um per unit, a real
   segmentation, shared membranes labelled), aggregates of deformed, compressed spheres (a
   power diagram of ellipsoids with low-order bumps, each cell = its power cell inside its own
   deformed sphere, triangulated by marching cubes of that implicit function on a 0.15 um grid:
   two bilayers on every contact, the junction creases at 0.15 um), one elongated cell (3:1
   ellipsoid) and one non-convex cell (a dumbbell, smooth union of two spheres);
2. the membrane density: area-weighted uniform random points on the triangles (400 per um^2,
   hundreds per voxel), weight = the triangle's dye density (2 on a shared .rec face) times a
   depth attenuation exp(-z / 60 um), deposited on their nearest sample of a fine grid
   (spacing <= 0.083 um laterally and 0.125 um axially, an integer fraction 1/m of the voxel);
3. the optics: a PSF from ``psfmodels`` (confocal = excitation x emission through a 1 Airy
   unit pinhole, or widefield; vectorial or scalar) sampled at the fine grid (computed 3x
   finer laterally and subsampled: psfmodels interpolates a radial profile sampled at a step
   tied to its dxy, whose samples are 2.5% of the peak off a 15x finer computation at 1x and
   0.35% at 3x; the pinhole disc gets 10 samples per radius), convolved by
   ``scipy.signal.oaconvolve`` (zero padding, no wrap-around). Kernel boxes: +-12 um axially and
   +-8 um laterally for widefield (cache version 7; before, +-5 / +-3.5 um kept 43% of that
   energy); +-10 / +-5 um for confocal (cache version 8; before, +-1.6 / +-0.75 um). The confocal
   kernel is excitation and emission from ``psfmodels.make_psf`` with the pinhole applied by FFT
   to an emission PSF computed on the box widened by the pinhole's radius (``confocal_kernel``):
   equal to ``psfmodels.confocal_psf`` to 5e-16 of the peak wherever that one's pinhole step
   stays inside its box (tests/test_bench_accuracy.py), without its dimmed edge (it convolves a
   truncated emission PSF) and faster than its direct ``convolve2d`` (which took 333 s for a
   +-6.4 / +-3 um box; this one 92 s for +-10 / +-5 um at load 24 on the 2 cores). The confocal PSF's energy per plane falls only as 1 / z^2 (z^2 x the
   energy of a 0.125 um plane ~ 0.010 from 1 to 8 um), so a small box misses much of its light.
   Light held by each box, relative to a +-20 / +-10 um box (``--kernel-light``, fine grid
   0.125 / 0.083 um):

   ==================  ==============  ==============
   box (z / lateral)   vectorial       scalar
   ==================  ==============  ==============
   +-1.6 / +-0.75 um   88.86%          89.36%
   +-3.2 / +-1.5 um    94.63%          94.94%
   +-5 / +-3 um        97.38%          97.46%
   +-6.4 / +-3 um      97.75%          97.90%
   +-8 / +-4 um        98.49%          98.58%
   +-10 / +-5 um       98.99%          99.05%
   +-15 / +-7.5 um     99.66%          99.68%
   ==================  ==============  ==============

4. the detector: the mean of each m x m x m block of fine samples (voxel integration; the fine
   grid is offset by -(m - 1) / (2 m) voxel so that every block centre lands on the voxel
   centre origin + i * spacing, the project's convention), scaled to ``--photons`` at the
   99.9th percentile, plus a smooth background gradient (``--background`` counts +-25%), then
   Poisson noise and Gaussian read noise (``--read-noise`` counts).

The fit runs as a user runs it: ``deltamic fit IMAGE.tif --seeds SEEDS.csv --spacing ... --psf
...`` in a subprocess (its wall time includes start-up), with the PSF options a user knows
(the optics of the microscope) and seeds at the true cell centroids, with a radius column
(0.6 x the equivalent radius) on half the cases and without it (radii estimated by the CLI) on
the others. The baseline runs on the same image in the same run as a careful user would:
Gaussian smoothing of one voxel, seed markers = balls of half the seed radius, a background
marker outside the dilated (3 voxels), closed, hole-filled (in 3D and in every z plane) Otsu
foreground and outside every seed's radius, ``skimage.segmentation.watershed`` of
the smoothed image, marching cubes of each label at 0.5 with the voxel spacing (volumes from
the label voxel counts; contact areas from the project's shared-membrane surface nets of the
watershed labels, ``meshes_from_labels(shared=True)``, the best contact estimate a user of
this project has).

Metrics (``--` in the table when a method lost a cell): mean surface distance = symmetric
mean of exact point-to-triangle distances (dense points on each cell surface to the other
surface; candidates by a k-d tree of triangle centroids within the nearest-vertex distance +
the largest centroid-to-corner radius, closest points by ``trimesh.triangles.closest_point``),
averaged over cells, in xy voxels; HD95 = worst cell's 95th percentile of both directed
distances, xy voxels; volume error = worst |V / V_true - 1| over cells; contact error = worst
|A / A_true - 1| over the truth contacts larger than 5 um^2 (an aggregate's true contact is the
exact interface p_i = p_j inside both cells and outside every third cell, ``interface_area``:
-0.02% on the analytic two-sphere disc, tests/test_bench_accuracy.py; the embryo's is its
labelled shared faces).

Images, truths and seeds are cached in ``benchmarks/results/accuracy/`` (gitignored), so a
re-run only fits. ``--quick`` runs one case (4-cell aggregate, 0.5/0.25 um voxels, vectorial
confocal). ``--model-matched`` also runs ``bench_fit_embryo.py`` (image made by the project's
own Gaussian renderer: the model-matched row).

Measured 2026-12-02 on the shared 2-core machine (load average 8-10: wall times are several
times a quiet machine's; only the distances and errors compare across rows). Quick case
(4-cell aggregate, 71 x 163 x 121 voxels of 0.5/0.25/0.25 um, vectorial confocal NA 1.1 water
488/525 nm 1 AU, 120 photons over 8 +-25%, read noise 2, seeds without radius), ``--quick
--fit-psf gaussian``:

============================================  ======  =====  =======  =======  =======
method                                        mean d  HD95   vol err  contact  wall
============================================  ======  =====  =======  =======  =======
seeded watershed + marching cubes             0.236   0.79   0.94%    269%     7 s
fit, ``--psf gaussian --sigma 0.264 0.102     0.190   0.81   0.53%    61%      2424 s
0.102 --learn-psf``, previous defaults
same, current defaults                        0.068   0.30   0.10%    61%      767 s
same, ``--fit-config '{"contact_gap_um":      0.067   0.28   0.14%    38%      1897 s
0.75}'`` (gaps closed at the rebuild)                                            (load 13)
============================================  ======  =====  =======  =======  =======

(d ratio 0.29, target <= 0.33 and <= 0.10 voxel: met; volume 0.100%, at the 0.1% target; the
2-4 contact still partly two sheets; time 106x the watershed's, target 10x. Closing thin gaps
at the shared-membrane rebuild halves that contact's error but not to 2%, and costs volume
accuracy: ``contact_gap_um`` stays 0 by default.) The levers, one
at a time on ``--tiny`` (3 cells of 4 um radius, 34 x 93 x 80 voxels, same image formation;
watershed 0.264 / HD95 0.70 / 3.3% / 7.4%), ``--fit-psf gaussian`` + ``--fit-config``:

=========================================================  ======  =====  =======  =======
fit                                                        mean d  HD95   vol err  contact
=========================================================  ======  =====  =======  =======
previous defaults (80 / 120 / 10 iterations)               0.368   1.59   1.34%    4.0%
50 full-resolution iterations                              0.214   1.09   0.50%    5.7%
100 full-resolution iterations                             0.133   0.67   0.07%    11.1%
50, ``refine_lr_factor`` 1                                 0.141   0.70   0.08%    10.0%
50, lambda 1 at full resolution                            0.116   0.55   0.03%    8.6%
50, ``contact_gap_um`` 0.75                                0.215   0.89   0.24%    10.5%
50, lambda 1 at full resolution + ``refine_lr_factor`` 1   0.091   0.35   0.03%    9.9%
current defaults (the above + plateau rule), console       0.091   0.35   0.03%    9.9%
``--fit-psf physical`` (``--psf confocal``), previous      0.319   1.70   1.11%    5.6%
=========================================================  ======  =====  =======  =======

The learnt Gaussian still widens (0.26/0.10/0.10 -> 0.37/0.14/0.14 um) to imitate the
confocal skirt. The full table (7 cases), the confocal PSF and voxel integration
(``--fit-config '{"voxel_integrated": true}'``) at the current defaults were not run.

Re-measured 2026-12-02 (load 12-15, in-process, same defaults): ``--tiny`` 0.091 / 0.35 /
0.03% / 9.9% (contacts -4.6% and -9.9%), quick case 0.068 / 0.30 / 0.100% / 61% (1334 s).
Why contacts miss: (a) the shared sheets sit on the true contact (mean 0.017 um on ``--tiny``)
but stop short of its rim: near the junction the two cells' free membranes run together,
coincident (0.017 um from the truth), over 8-14% of the true contact: two sheets of
intensity 1 image exactly like one of intensity 2, so nothing in the data moves the junction
out again; (b) on the quick case the 2-4 contact had a gap when the shared membranes were
built (end of the first level) and stays two sheets (-63% after the second level, -61% at the end). The metric
itself (fixed since): the truth meshes' classified faces (marching cubes, h = 0.15 um) gave
the contact 1.15% too small on an analytic disc and -1.0% / -1.6% on ``--tiny``'s two
contacts; the contacts are now the exact interfaces (cache version 5).

Contact levers, 2026-12-02 (load 11-20; exact truth contacts, so the defaults' ``--tiny``
contacts read -5.5% / -11.3%), ``--fit-psf gaussian`` + ``--fit-config``, contacts in %:

==============================================================  ======  ====  =======  ============
fit                                                             mean d  HD95  vol err  contacts
==============================================================  ======  ====  =======  ============
``--tiny``, current defaults                                    0.091   0.35  0.03%    -5.5 / -11.3
``{"tension": 0.03}``, from the first level (held cells apart)  0.091   0.35  0.07%    -6.8 / -18.1
``{"tension": 0.1}``, meshes with shared faces only             0.087   0.33  0.10%    -4.7 / -10.0
``{"tension": 0.3}``, same                                      0.082   0.30  0.31%    -3.2 / -7.9
``{"reshare_membranes": "always"}``                             0.077   0.28  0.05%    -4.5 / -8.4
``{"reshare_membranes": "always", "tension": 0.1}``             0.073   0.26  0.10%    -4.0 / -7.6
``{"reshare_membranes": "always", "contact_gap_um": 0.5}``      0.082   0.28  0.08%    +3.9 / +2.1
``--tiny``, current defaults, re-run on today's main            0.091   0.35  0.03%    -5.5 / -11.3
quick case, ``{"reshare_membranes": "new"}`` (= the defaults)   0.068   0.30  0.10%    2-4: -61.4
quick case, ``{"reshare_membranes": "always"}``                 0.055   0.22  0.12%    2-4: -42.4
quick case, ``always`` + ``"contact_gap_um": 0.5``              0.053   0.20  0.15%    3-4: +30.9
quick case, current defaults, re-run on today's main            0.068   0.30  0.10%    2-4: -61.4
==============================================================  ======  ====  =======  ============

("new" never fired on the quick case: cells 2 and 4 already share 27 of their 69 um^2 and the
rest stays two free sheets, 12 um^2 of them within 0.2 um of each other, which only "always"
rebuilds.) Tension zips the junction (the coincident free area within 0.1 um drops from 0.77
to 0.10 um^2 on the 1-3 contact) but shrinks the cells. A rebuild at every level change
("always", the rebuilt mesh snapped back onto the fitted surfaces) is the best single lever:
closer surfaces on both cases, contacts closer; with ``contact_gap_um`` 0.5 the ``--tiny``
contacts overshoot slightly (+3.9 / +2.1%: sheets within a voxel are zipped beyond the true
junction). None reaches 2% everywhere, and "always" costs volume on the quick case (0.12%,
0.15% with the gap closing, vs 0.10%; with it the 2-4 contact is -8.1% but the small 3-4 one,
9.5 um^2, +30.9%): all stay off by default (quick-case walls 524-628 s at
load 13-20, watershed 13-26 s).

Contacts decided by the surfaces, 2026-12-03 (load 9-13, 1 thread, ``--cases embryo3-coarse
agg6-coarse --fit-psf gaussian``, previous rebuild = ``--fit-config '{"reshare_membranes": "off",
"merge_gap_um": 0, "reshare_final_at": 0}'``, then the new defaults, back to back). Per pair
(``contact a-b`` lines; truth um^2, error %): the previous rebuild zipped by voxel adjacency once,
after the blurred first level, so near-touching sheets stayed two (embryo 2-3, agg6 1-4, 1-5, 3-5:
47.9 um^2 of agg6 1-4's free membranes within 0.1 um of each other) and interpenetrating
first-level surfaces were zipped into the wedge (agg6 2-3, 2-6). Now the contacts are decided
by the gap between the current surfaces (``merge_gap_um`` 0.1 um) at every level change and
half-way through the last level (``reshare_final_at``); ``snap_to_cells`` refused no vertex:

==================  ======  =======================  ========================  ==============
pair                truth   watershed                fit, previous rebuild     fit, now
==================  ======  =======================  ========================  ==============
embryo3 1-2         177.9   +7.5                     +15.6                     +7.5
embryo3 1-3         148.3   +8.5                     +15.1                     +7.6
embryo3 2-3          37.2   +10.4                    -39.2                     +3.5
agg6 1-4             78.0   -7.1                     -72.6                     -4.3
agg6 1-5             11.7   +48.4                    -100 (two sheets)         +23.1
agg6 2-3             12.0   +121.4                   +155.4                    +110.1
agg6 2-6             54.7   -1.7                     +27.0                     +14.3
agg6 3-5             24.0   +15.5                    -79.1                     +4.6
==================  ======  =======================  ========================  ==============

Whole rows (mean d / HD95 / worst vol / worst contact): embryo3-coarse 0.133 / 0.61 / 0.25% /
39.2% -> 0.090 / 0.37 / 0.12% / 7.6% (watershed 0.251 / 0.67 / 1.50% / 10.4%); agg6-coarse
0.143 / 1.25 / 1.01% / 155.4% -> 0.089 / 0.59 / 0.60% / 110.1% (watershed 0.280 / 0.75 / 5.41% /
121.4%). The two extra rebuilds cost ~7-10% of the fit (``fitter_remesh_s`` 4.5 -> 17.5 s of
42 -> 92 s on embryo3 while the load doubled the per-iteration time). What is left: the shared
sheets still overshoot where the first level's separate surfaces interpenetrated (agg6 2-3: the
two cells' level-4 surfaces overlap over 33.5 um^2 of a 12 um^2 contact, which the later
levels shrink only partly; embryo3 1-2: 4.4 um^2 of the fitted sheet lies where the true
membranes are > 0.3 um apart).

The non-convex case's volume error was the images', not the fit's (2026-12-03, load 4-8,
``--cases nonconvex-coarse --fit-psf physical``): the fitted dumbbell was 6.46% too large
(mean d 0.312 vox), not at its waist but on the surfaces facing along z (+0.29 um on faces with
|n_z| > 0.7, +0.001 um on lateral ones), because the widefield kernel box (+-5 / +-3.5 um) cut
off 57% of the PSF's out-of-focus light that the fit's complete Gibson-Lanni model puts in. With
the kernel box at +-12 / +-8 um (cache version 7): volume -0.71%, mean d 0.206 vox. (With
``--fit-psf gaussian`` on the old images: -4.40%, the learnt Gaussian widened to sigma
2.78 / 0.57 / 0.57 um to imitate the haze.)

The confocal kernel box (cache version 8: +-10 / +-5 um, 99% of the light of a box twice as
large, instead of +-1.6 / +-0.75 um, 89%), 2026-12-03 (load 13-24, 1 thread, ``--fit-psf
gaussian``, current defaults), old and new images (mean d / HD95 / worst vol / worst contact):

==============  ==================================  ==================================
case            version 7 (+-1.6 / +-0.75 um)       version 8 (+-10 / +-5 um)
==============  ==================================  ==================================
agg4-fine       watershed 0.236 / 0.79 / 0.94% /    watershed 0.241 / 0.78 / 0.93% /
                247.8%; fit 0.045 / 0.16 / 0.22%    255.0%; fit 0.047 / 0.16 / 0.23%
                / 49.0% (503 s)                     / 19.3% (717 s)
embryo3-fine    watershed 0.237 / 0.64 / 0.41% /    watershed 0.238 / 0.65 / 0.42% /
                10.9%; fit 0.092 / 0.29 / 0.12% /   11.6%; fit 0.093 / 0.30 / 0.15% /
                3.0% (855 s)                        3.7% (437 s)
==============  ==================================  ==================================

(version 8 watershed rows of the other confocal cases: embryo3-coarse 0.253 / 0.68 / 1.48% /
11.6%, agg6-coarse 0.288 / 0.77 / 5.58% / 121.2%, agg8-fine 0.254 / 0.85 / 1.25% / 52.5%.) The
missing 10% of the light was a faint haze: both methods barely move. ``--fit-psf measured`` fits
with ``--psf measured bead.tif``, a bead stack of the same optics (``make_bead``).

Why the physical PSFs were slow (render + backward of three 6 um spheres on agg4-fine's
71 x 163 x 121 grid, 1 thread, load 13-20): the learnt Gaussian takes the real-space route,
0.35 s; ``ConfocalPSF`` had no real-space kernel and took the Fourier route, which folds aliases
from a 2 x 4 x 4 oversampled band: plan 30 s, 34-60 s per render + backward. With fixed optics
(no ``--learn-psf``) its Nyquist-rate samples now take the MeasuredPSF low-rank route
(``render.route.nyquist_samples``: rank 8, window 10 x 8 x 8 voxels): plan 2.9 s, 13 s (the
window, not the rank, costs: the confocal's skirt above 3e-4 of the peak reaches +-2.4 um
axially). A measured bead (``make_bead``: ~2000 photons at the peak) still takes the Fourier
route (plan 117 s, 67-139 s per render + backward): its noise keeps the low-rank decomposition
above its 1e-3-of-the-peak bound up to rank 32 (1e-2 is met at rank 13), so the route refuses it.

``--psf confocal`` with the true optics (NA 1.1 water, 488 / 525 nm, 1 AU; the route above, the
defaults before e9a5ee8's coarse_blur 1.0), agg4-fine, version 8, 1 thread, load 13-24, the same
run's watershed 0.241 / 0.78 / 0.93% / 255.0% (34 s): fit 0.049 / 0.16 / 0.25% / 20.2% in 1197 s
(242 iterations, render 399 s + backward 586 s), against ``--psf gaussian --learn-psf`` 20 minutes
earlier 0.047 / 0.16 / 0.23% / 19.3% in 717 s (render 183 s + backward 312 s): as close, 1.7x
the time. ``--psf measured`` and embryo3-fine were not fitted (the measured bead's Fourier route:
~100 s per iteration).

Finer facets late in the fit, 2026-12-04 (1 thread, load 9-22, ``--fit-psf gaussian``, mean d /
HD95 / worst vol): embryo3-fine's 0.091 / 0.31 / 0.12% is unbiased (mean signed distance -0.002
voxel; free membranes 66% of it, triple-junction surroundings 23%) and at the chord limit of its
1.46 um facets (the truth remeshed to 1.46 um, vertices on it: 0.099). ``--fit-config
'{"subdivide_final_at": 0.5}'`` (each triangle split in four half-way through the last level,
``subdivide_lambda_factor`` 2): embryo3-fine 0.076 / 0.25 / 0.13%, agg4-fine 0.045 / 0.14 /
0.27% (defaults 0.045 / 0.14 / 0.27%), tiny-agg3 0.069 / 0.22 / 0.04% (defaults 0.061 / 0.19 /
0.05%): off by default (factor 1: embryo3-fine 0.068, agg4-fine 0.049; factor 4: 0.088, 0.044,
tiny 0.061). ``target_edge_um`` 0.9 and 1.2 lost cells on embryo3-fine (the coarse levels get
3.6-4.8 um edges) and 1.0 crashed in gpytoolbox's remesher (SIGSEGV, at the half-way rebuild).

Widefield, 2026-12-04 (1 thread, load 8-19): ``--fit-psf physical`` on a widefield case is
``--psf gibson-lanni`` with the true optics, plus ``--vectorial`` on the vectorial cases (the
model of their images; the fit's vectorial model is within 1e-4 of psfmodels' peak,
tests/test_psf_peers.py). elongated-fine's fit was tapered, +0.16 um at its shallow (brighter)
end and -0.20 um at the deep one: with a constant gain the fit traded membrane area for the
depth attenuation's brightness. With the gain linear in depth and a background plane
(``FitConfig.photometric_field="linear"``, now the default), mean d / HD95 / worst volume:
elongated-fine 0.460 / 2.32 / 0.01% (scalar, constant) -> 0.195 / 0.65 / 0.00% (vectorial,
linear; scalar + linear 0.223 / 0.83 / 1.02%, vectorial + constant 0.466 / 2.41 / 0.77%),
watershed 1.079; nonconvex-coarse 0.214 / 0.80 / 0.68% -> 0.204 / 0.79 / 0.52%; agg4-fine
(``--fit-psf gaussian``) 0.045 / 0.14 / 0.27% / 11.2% -> 0.038 / 0.11 / 0.04% / 6.0%; embryo3-coarse
0.071 / 0.24 / 0.10% / 5.8% -> 0.067 / 0.23 / 0.08% / 11.0% (contacts 2-3 and 1-3 worse). Left: the z-facing
surfaces (|d| ~0.1 um where |n_z| > 0.7 vs 0.012 um on the sides).

The contact metric checked, 2026-12-04 (``--fit-psf gaussian``, 1 thread, load 1-9; the fits of
the current defaults: embryo3-fine worst 11.1%, agg4-fine 6.8%, tiny-agg3 0.8%). Truth and fit
measure the same thing: the area of the faces labelled (a, b) (the fit's ``contacts.csv`` is
``geometry.contacts`` of its mesh), against the exact interface on the aggregates and the
labelled shared faces of the .rec on the embryo. The fitted shared sheets lie on the true
interface (mean 0.004-0.010 um on agg4-fine and tiny-agg3, 0.014-0.023 um on embryo3-fine): the
errors are where the rim is. agg4-fine 2-3 (+4.8%): the fit's sheet runs 0-0.2 um past the true
rim all round (3.5 um^2 outside the truth's footprint, none missing), where the true membranes
are < 0.1 um apart (``merge_gap_um``); 3-4 (-6.8%) and 2-4 (-0.8%): 0.4 um^2 each of the true
contact left as two free sheets 0.035 um apart (median). The rebuild's own rule applied to the
TRUE cell surfaces (the fitter's label image, ``contact_labels_by_gap``, surface nets, remesh to
1 um and snap) gives, per ``merge_gap_um`` 0 / 0.05 / 0.1: agg4-fine 3-4 +18.7 / -1.2 / +12.7%,
2-3 +1.8 / +1.0 / +4.1%; tiny-agg3 (0.05 / 0.075 / 0.1) 2-3 -3.1 / -2.4 / +0.7%; embryo3-fine
2-3 +7.0 / +7.4 / +12.1%: the embryo's true membranes of cells 2 and 3 run within 0.03 um of each
other over 1.6 um^2 and within 0.1 um over 3.6 um^2 (9.8% of that contact) beyond its labelled
shared faces, which no light microscope tells from a contact. So the metric is not biased by a
definition mismatch, but on the embryo's 2-3 its truth is itself uncertain by ~5-10%, and no gap
rule puts the rim within 2% on every contact even from perfect surfaces. Levers measured
(``--fit-config``; tiny-agg3 1-3 / 2-3, agg4-fine 1-2 / 2-3 / 2-4 / 3-4, %): ``merge_gap_um``
0.05: -1.6 / -6.5, -1.2 / +1.2 / -4.6 / -29.1; 0.075: -1.7 / -4.1, -0.3 / +2.8 / -2.2 / -12.3
(with ``reshare_final_at`` 0.7 the same); ``reshare_final_at`` 0.8: -0.5 / -1.2, +0.2 / +4.9 /
-0.7 / -6.0 (volume 0.11% vs 0.04%); 0.98 (a rebuild after the last level): -0.6 / -1.2, +0.0 /
+5.2 / -0.9 / -6.2 but every cell 0.26-0.37% too small (mean d 0.051 vs 0.037); 0 (no half-way
rebuild): -3.3 / -3.6, -0.7 / +2.2 / -3.3 / -17.0; ``reshare_membranes`` "new": -1.1 / -2.9,
-0.7 / +3.6 / -1.3 / -7.2; splitting every shared membrane into two free sheets at 0.3 of the last
level and deciding all contacts anew at 0.6 (not kept): -0.3 / -0.9, +0.4 / +5.0 / -0.5 / -100
(the axial 3-4 sheets, free, settle 0.21 um apart, under one learnt sigma_z of 0.39 um: the
Gaussian's misfit of the confocal's axial profile, not the data, holds them apart). Each rebuild
ratchets an existing contact outward (a shared sheet has no gap to re-decide it by, and the 1 um
facets next to a junction run the two free sheets together), so fewer rebuilds shrink the
contacts and more grow them. The defaults stay.

Usage: ``nice python benchmarks/bench_accuracy.py [--quick | --tiny] [--cases NAME ...] [--fit-psf
physical|gaussian] [--fit-args "--iterations ..."] [--fit-config JSON] [--tag NAME] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "accuracy"
REC = ROOT / "src" / "deltamic_core" / "data" / "Sample01_007.rec"
GEN_VERSION = 8  # bump when the image generation changes (invalidates the cache)
# the widefield images are the same as in version 7 (only the confocal kernel box changed in 8):
# their cache keys stay
WIDEFIELD_GEN_VERSION = 7

# fine-grid targets (um): lateral, axial
FINE_XY, FINE_Z = 0.0834, 0.125
POINTS_PER_UM2 = 400.0

OPTICS = {
    # water-dipping confocal: NA 1.1, 488 nm excitation, 525 nm emission, 1 AU pinhole
    "confocal": dict(NA=1.1, ex_wvl=0.488, em_wvl=0.525, ni=1.33, ns=1.33, pinhole_au=1.0),
    # widefield, water immersion NA 1.0 (membranes: its out-of-focus haze is part of the test)
    "widefield": dict(NA=1.0, em_wvl=0.525, ni=1.33, ns=1.33),
}


@dataclass
class Case:
    name: str
    geometry: str  # embryo | aggregate | elongated | nonconvex
    spacing: tuple  # (z, y, x) um
    psf: str  # confocal-vectorial | confocal-scalar | widefield-vectorial | widefield-scalar
    seed_radius: bool  # radius column in the seeds CSV
    n_cells: int = 1
    seed: int = 0
    extra: dict = field(default_factory=dict)


CASES = [
    Case("embryo3-fine", "embryo", (0.5, 0.25, 0.25), "confocal-vectorial", True),
    Case("embryo3-coarse", "embryo", (1.0, 0.5, 0.5), "confocal-scalar", False),
    Case("agg4-fine", "aggregate", (0.5, 0.25, 0.25), "confocal-vectorial", False, n_cells=4, seed=1),
    Case("agg6-coarse", "aggregate", (1.0, 0.5, 0.5), "confocal-vectorial", True, n_cells=6, seed=2),
    Case("agg8-fine", "aggregate", (0.5, 0.25, 0.25), "confocal-scalar", True, n_cells=8, seed=3),
    Case("elongated-fine", "elongated", (0.5, 0.25, 0.25), "widefield-vectorial", True),
    Case("nonconvex-coarse", "nonconvex", (1.0, 0.5, 0.5), "widefield-scalar", False),
]
QUICK = "agg4-fine"
# the lever-exploration proxy (--tiny): 3 small cells, same image formation, metrics, baseline
TINY = Case(
    "tiny-agg3", "aggregate", (0.5, 0.25, 0.25), "confocal-vectorial", False, n_cells=3, seed=5, extra={"radius": 4.0}
)


# =============================================================================================
# truth geometry
# =============================================================================================
def _tri_areas(v, f):
    return 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)


def _signed_volume(v, f):
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    o = v.mean(axis=0)
    return float(np.einsum("ij,ij->i", a - o, np.cross(b - o, c - o)).sum() / 6.0)


def _random_rotation(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


class DeformedSphere:
    """Power function p(x) = rho^2 - R(u)^2 of an ellipsoid (axes ``axes`` x r, rotation
    ``rot``) whose radius is modulated by two smooth bumps: R(u) = r (1 + e1 (u.a)^2 - e1/3
    + e2 (u.b)^3). p < 0 inside; for a plain sphere p = |x - c|^2 - r^2 (a power diagram)."""

    def __init__(self, centre, radius, rng, deform=0.12):
        self.c = np.asarray(centre, float)
        self.r = float(radius)
        self.rot = _random_rotation(rng)
        self.axes = 1.0 + deform * rng.uniform(-1, 1, 3)
        self.a = _unit(rng.normal(size=3))
        self.b = _unit(rng.normal(size=3))
        self.e1, self.e2 = deform * rng.uniform(-1, 1), 0.6 * deform * rng.uniform(-1, 1)

    def __call__(self, x):
        q = (x - self.c) @ self.rot / self.axes
        rho = np.linalg.norm(q, axis=-1)
        u = q / np.maximum(rho, 1e-12)[..., None]
        ua, ub = u @ self.a, u @ self.b
        rr = self.r * (1 + self.e1 * (ua**2 - 1 / 3) + self.e2 * ub**3)
        return rho**2 - rr**2


def _unit(v):
    return v / np.linalg.norm(v)


def _marching(fun, lo, hi, h):
    """Closed triangle mesh of {fun < 0} (fun evaluated on a grid of step h over [lo, hi]),
    outward normals."""
    from skimage.measure import marching_cubes

    axes = [np.arange(a - 2 * h, b + 2 * h, h) for a, b in zip(lo, hi)]
    zz = axes[0]
    vals = np.empty((len(axes[0]), len(axes[1]), len(axes[2])), np.float32)
    Y, X = np.meshgrid(axes[1], axes[2], indexing="ij")
    for i, z in enumerate(zz):  # slab by slab (memory)
        pts = np.stack([np.full_like(Y, z), Y, X], axis=-1)
        vals[i] = fun(pts)
    vals[[0, -1]] = 1.0
    vals[:, [0, -1]] = 1.0
    vals[:, :, [0, -1]] = 1.0
    v, f, _, _ = marching_cubes(vals, 0.0, spacing=(h, h, h))
    v = v + np.array([a[0] for a in axes])
    f = f.astype(np.int64)
    if _signed_volume(v, f) < 0:
        f = f[:, [0, 2, 1]]
    return v.astype(np.float64), f


def build_aggregate(n, rng, h=0.15, radius=None):
    """n deformed, compressed spheres packed around a centre (power diagram), one closed
    surface per cell. Returns list of (verts, faces) per cell, contact areas, cells' functions."""
    if radius is None:
        radius = 7.5 if n <= 4 else 6.5
    # centres: a flattened cluster, nearest neighbours ~1.55 r apart (overlap -> flat contacts)
    pts = []
    for _ in range(20000):
        if len(pts) == n:
            break
        p = rng.normal(size=3) * np.array([0.45, 1.0, 1.0]) * radius * (0.6 + 0.25 * n)
        if all(np.linalg.norm(p - q) > 1.5 * radius for q in pts):
            pts.append(p)
    pts = np.asarray(pts)
    # pull together until every cell overlaps a neighbour (compression)
    for _ in range(200):
        cm = pts.mean(axis=0)
        d = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(n) * 1e9
        if d.min(axis=1).max() < 1.65 * radius:
            break
        pts = pts + 0.05 * (cm - pts) * (d.min(axis=1)[:, None] > 1.65 * radius)
    cells = [DeformedSphere(p, radius * rng.uniform(0.9, 1.1), rng) for p in pts]

    def own(i):
        def f(x):
            pi = cells[i](x)
            others = np.min(np.stack([cells[j](x) for j in range(n) if j != i]), axis=0)
            # inside own deformed sphere AND in its power cell; scaled to ~um
            return np.maximum(pi, pi - others) / (2 * cells[i].r)

        return f

    meshes = []
    for i, c in enumerate(cells):
        ext = 1.4 * c.r * c.axes.max()
        meshes.append(_marching(own(i), c.c - ext, c.c + ext, h))
    # contacts: the exact interface {p_i = p_j} inside both deformed spheres and outside every
    # third cell's power cell (not the marching-cubes faces, whose rounded junction creases
    # lose ~1% of each contact); the truth meshes' classified faces only locate it
    contact = {}
    for i, (v, f) in enumerate(meshes):
        cen = v[f].mean(axis=1)
        others = np.stack([cells[j](cen) if j != i else np.full(len(cen), np.inf) for j in range(n)])
        jstar = np.argmin(others, axis=0)
        inside = others[jstar, np.arange(len(cen))] < 0
        for j in range(i + 1, n):
            sel = inside & (jstar == j)
            if sel.any():
                pts = v[f[sel]].reshape(-1, 3)
                contact[(i + 1, j + 1)] = interface_area(cells, i, j, pts.min(axis=0) - 1.0, pts.max(axis=0) + 1.0)
    return meshes, contact


def _clipped_area(v, f, c):
    """Area of the part of each triangle where the linear interpolation of the vertex values
    ``c`` is negative (exact for a linear function)."""
    a = _tri_areas(v, f)
    cv = c[f]
    neg = cv < 0
    k = neg.sum(axis=1)
    out = np.where(k == 3, a, 0.0)
    for kind in (1, 2):  # the lone vertex: the negative one (k = 1) or the positive one (k = 2)
        rows = np.nonzero(k == kind)[0]
        if not len(rows):
            continue
        lone = np.argmax(neg[rows] if kind == 1 else ~neg[rows], axis=1)
        c0 = cv[rows, lone]
        c1 = cv[rows, (lone + 1) % 3]
        c2 = cv[rows, (lone + 2) % 3]
        frac = (c0 / (c0 - c1)) * (c0 / (c0 - c2))  # the corner triangle at the lone vertex
        out[rows] = a[rows] * (frac if kind == 1 else 1.0 - frac)
    return out


def interface_area(cells, i, j, lo, hi, h=0.05):
    """Area (um^2) of the contact of cells i and j of a power diagram of ``cells`` (callables p,
    p < 0 inside) within the box [lo, hi]: the surface p_i = p_j (marching cubes of that smooth
    function, step h: exact for a plane) clipped where max(p_i, p_i - p_k for k != i, j) < 0
    (inside both cells, outside every third cell's power cell), by linear interpolation on each
    triangle. Converges as h^2 (tested against the two-sphere disc in tests/test_bench_accuracy.py)."""
    from skimage.measure import marching_cubes

    axes = [np.arange(a, b + h, h) for a, b in zip(lo, hi)]
    Y, X = np.meshgrid(axes[1], axes[2], indexing="ij")
    g = np.empty((len(axes[0]), len(axes[1]), len(axes[2])))
    for s, z in enumerate(axes[0]):  # slab by slab (memory)
        pts = np.stack([np.full_like(Y, z), Y, X], axis=-1)
        g[s] = cells[i](pts) - cells[j](pts)
    if not (g.min() < 0 < g.max()):
        return 0.0
    v, f, _, _ = marching_cubes(g, 0.0, spacing=(h, h, h))
    v = v + np.array([a[0] for a in axes])
    pi = cells[i](v)
    c = pi.copy()
    for k in range(len(cells)):
        if k not in (i, j):
            c = np.maximum(c, pi - cells[k](v))
    return float(_clipped_area(v, f.astype(np.int64), c).sum())


def build_single(kind, rng, h=0.12):
    if kind == "elongated":
        rot = _random_rotation(np.random.default_rng(7))
        axes = np.array([4.5, 4.5, 13.5])

        def f(x):
            q = (x @ rot) / axes
            return (np.linalg.norm(q, axis=-1) - 1.0) * 4.5

        ext = 14.0
    else:  # dumbbell: smooth union of two spheres (a waist: non-convex)
        c1, c2, r, k = np.array([0.0, -5.0, -3.0]), np.array([0.0, 5.0, 3.0]), 6.0, 1.5

        def f(x):
            d1 = np.linalg.norm(x - c1, axis=-1) - r
            d2 = np.linalg.norm(x - c2, axis=-1) - r
            hh = np.clip(0.5 + 0.5 * (d2 - d1) / k, 0, 1)
            return d2 * (1 - hh) + d1 * hh - k * hh * (1 - hh)

        ext = 13.0
    v, fc = _marching(f, (-ext,) * 3, (ext,) * 3, h)
    return [(v, fc)], {}


@dataclass
class Truth:
    verts: np.ndarray  # (V, 3) um, image frame
    faces: np.ndarray  # (F, 3)
    dye: np.ndarray  # (F,) dye density per unit area
    cell_of_face: list  # per cell: (verts, faces) closed outward surface
    volumes: dict
    contacts: dict  # (a, b) -> um^2
    centroids: dict


def make_truth(case: Case, margin=3.0) -> Truth:
    rng = np.random.default_rng(case.seed)
    if case.geometry == "embryo":
        from deltamic_core.geometry import cell_surface, measure, orient_outward
        from deltamic_core.io import read_mesh

        # the .rec winds ~3% of its faces against their labels: without the repair the per-cell
        # surfaces are not consistently oriented and their signed volumes 5-9% low
        m = orient_outward(read_mesh(REC, spacing_um=0.25))
        meas = measure(m)
        cells = [int(c) for c in meas["cell"]]
        surfaces = {c: cell_surface(m, c) for c in cells}
        per_cell = {c: (s.verts, s.faces) for c, s in surfaces.items()}
        verts, faces, dye = m.verts, m.faces, m.face_intensity()
        con = meas.contacts
        contacts = {(int(a), int(b)): float(s) for a, b, s in zip(con["cell_a"], con["cell_b"], con["area_um2"])}
    else:
        if case.geometry == "aggregate":
            meshes, contacts = build_aggregate(case.n_cells, rng, radius=case.extra.get("radius"))
        else:
            meshes, contacts = build_single(case.geometry, rng)
        per_cell = {i + 1: vf for i, vf in enumerate(meshes)}
        off = np.cumsum([0] + [len(v) for v, _ in meshes])
        verts = np.concatenate([v for v, _ in meshes])
        faces = np.concatenate([f + o for (_, f), o in zip(meshes, off)])
        dye = np.ones(len(faces))
    lo = verts.min(axis=0) - margin
    verts = verts - lo
    per_cell = {c: (v - lo, f) for c, (v, f) in per_cell.items()}
    vols, cents = {}, {}
    for c, (v, f) in per_cell.items():
        vols[c] = _signed_volume(v, f)
        a, b, cc = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
        o = v.mean(axis=0)
        tv = np.einsum("ij,ij->i", a - o, np.cross(b - o, cc - o)) / 6.0
        cents[c] = o + (tv[:, None] * (a + b + cc - 3 * o) / 4.0).sum(axis=0) / tv.sum()
    return Truth(verts, faces, dye, per_cell, vols, contacts, cents)


# =============================================================================================
# image formation (independent of deltamic_core.render)
# =============================================================================================
def surface_points(v, f, weight_per_area, density, rng):
    """Area-weighted uniform random points on triangles; each carries (dye x area / count)."""
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = _tri_areas(v, f)
    n = int(math.ceil(area.sum() * density))
    idx = rng.choice(len(f), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    p = (1 - s)[:, None] * a[idx] + (s * (1 - r2))[:, None] * b[idx] + (s * r2)[:, None] * c[idx]
    return p, (area.sum() / n) * weight_per_area[idx]


# kernel box half-widths (z, lateral) in um. Widefield: its out-of-focus light spreads far (the
# energy per plane barely falls with defocus): the former +-5 / +-3.5 um box held only 43% of
# the energy within +-12 / +-8 um. Confocal: the energy per plane falls as ~1 / z^2 only, so the
# former +-1.6 / +-0.75 um box held 88.9% of the light within +-20 / +-10 um, this one 99.0%
# (``--kernel-light`` prints the table)
WIDEFIELD_BOX = (12.0, 8.0)
CONFOCAL_BOX = (10.0, 5.0)
# psfmodels samples its radial profile at a step tied to dxy: the PSF is computed this much finer
# laterally and subsampled (at 1x its samples are 2.5% of the peak off those of a 15x computation,
# at 3x 0.35%), which also resolves the pinhole disc (10 samples per radius)
PSF_SUB = 3


def _pinhole_disc(radius_px: float) -> np.ndarray:
    """psfmodels' pinhole (``confocal_psf``'s top hat): 1 on samples within ``radius_px`` of the centre."""
    n = int(math.floor(radius_px))
    x = np.arange(-n, n + 1)
    return (np.hypot(x[:, None], x[None, :]) <= radius_px).astype(np.float64)


def _make_psf(z, nx, dxy, opt, wvl, model, depth_um):
    """psfmodels' widefield PSF (float64) of the optics ``opt`` at wavelength ``wvl``: planes
    ``z`` (um), ``nx`` x ``nx`` samples of ``dxy`` um, point source at depth ``depth_um``."""
    import psfmodels

    h = psfmodels.make_psf(
        z,
        nx,
        dxy=dxy,
        pz=depth_um,
        NA=opt["NA"],
        ni=opt["ni"],
        ni0=opt["ni"],
        ns=opt["ns"],
        model=model,
        oversample_factor=1,
        normalize=False,
        wvl=wvl,
    )
    return np.asarray(h, dtype=np.float64)


def confocal_kernel(zv, n_half: int, dxy: float, *, model: str, depth_um=0.0, sub=PSF_SUB, chunk=8, phase=(0, 0)):
    """psfmodels' confocal PSF (``confocal_psf``: excitation x (emission conv_xy the pinhole top
    hat), ``sub`` x finer laterally) on an unbounded box, returned on (len(zv), 2 n + 1, 2 n + 1)
    samples of step ``dxy`` (the finer computation subsampled; ``phase`` (y, x) in 0..sub-1 shifts
    the samples by phase / sub samples: the point source sits that much off the middle one).

    Excitation and emission come from ``psfmodels.make_psf``; the emission is computed on the box
    widened by the pinhole's radius, so the pinhole convolution (FFT, 'valid' part) sees no
    truncated emission: ``confocal_psf`` itself convolves the emission of its own box with zero
    beyond it, which dims its values within a pinhole radius of the box's edge, and convolves
    directly (``convolve2d``, ~n^4 per plane: 333 s for a +-6.4 / +-3 um box). Equal to
    ``confocal_psf`` away from its edges (tests/test_bench_accuracy.py)."""
    from scipy.signal import fftconvolve

    opt = OPTICS["confocal"]
    d = dxy / sub
    disc = _pinhole_disc(opt["pinhole_au"] * 0.61 * opt["em_wvl"] / opt["NA"] / d)
    pr = disc.shape[0] // 2
    nx = 2 * (n_half + 1) * sub + 1  # one more sample each side for the phase
    n_out = 2 * n_half + 1
    py, px = phase
    zv = np.asarray(zv, dtype=np.float64)
    out = np.empty((len(zv), 2 * n_half + 1, 2 * n_half + 1))
    for s in range(0, len(zv), chunk):  # a few planes at a time (memory)
        z = zv[s : s + chunk]
        em = _make_psf(z, nx + 2 * pr, d, opt, opt["em_wvl"], model, depth_um)
        ex = _make_psf(z, nx, d, opt, opt["ex_wvl"], model, depth_um)
        em = fftconvolve(em, disc[None], mode="valid", axes=(1, 2))
        out[s : s + chunk] = (ex * em)[:, sub + py :: sub, sub + px :: sub][:, :n_out, :n_out]
    return out


def psf_kernel(kind: str, fine_spacing, depth_um=0.0, box_um=None):
    """PSF from psfmodels on the fine grid (centre at the middle sample), unit sum, on the box
    of half-widths ``box_um`` (z, lateral; default ``CONFOCAL_BOX`` / ``WIDEFIELD_BOX``)."""

    confocal = kind.startswith("confocal")
    model = "vectorial" if kind.endswith("vectorial") else "scalar"
    sz, sxy = fine_spacing[0], fine_spacing[1]
    hz, hxy = box_um or (CONFOCAL_BOX if confocal else WIDEFIELD_BOX)
    nz, nh = int(math.ceil(hz / sz)), int(math.ceil(hxy / sxy))
    zv = depth_um + sz * np.arange(-nz, nz + 1)
    if confocal:
        h = confocal_kernel(zv, nh, sxy, model=model, depth_um=depth_um)
    else:
        opt = OPTICS["widefield"]
        h = _make_psf(zv, 2 * nh * PSF_SUB + 1, sxy / PSF_SUB, opt, opt["em_wvl"], model, depth_um)
        h = h[:, ::PSF_SUB, ::PSF_SUB]
    return h / h.sum()


def kernel_light(kind: str, fine_spacing, boxes, reference_um):
    """Fraction of the light of the ``reference_um`` box (z, lateral half-widths) that each box
    of ``boxes`` holds (same fine-grid samples, cropped)."""
    h = psf_kernel(kind, fine_spacing, box_um=reference_um)
    cz, cy = h.shape[0] // 2, h.shape[1] // 2
    out = []
    for bz, bxy in boxes:
        kz, kh = int(math.ceil(bz / fine_spacing[0])), int(math.ceil(bxy / fine_spacing[1]))
        out.append(float(h[cz - kz : cz + kz + 1, cy - kh : cy + kh + 1, cy - kh : cy + kh + 1].sum()))
    return out


# the bead stack of ``--fit-psf measured``: a point source imaged by the same optics on the fine
# grid (a Nyquist-sampled bead acquisition, 0.125 / 0.083 um), off the middle sample by (0.3, 1/3,
# 2/3) samples, in a +-4 / +-2 um box; ~2000 photons at the peak over 8 +- Poisson, read noise 2
BEAD_BOX_UM = (4.0, 2.0)
BEAD_PHOTONS = 2000.0


def make_bead(case: Case, *, background, read_noise, seed, **_):
    """(bead stack float32, spacing) for ``case``'s optics (same psfmodels PSF as its images)."""

    fs = np.asarray(case.spacing) / np.asarray(fine_factors(case.spacing))
    sz, sxy = float(fs[0]), float(fs[1])
    nz, nh = int(math.ceil(BEAD_BOX_UM[0] / sz)), int(math.ceil(BEAD_BOX_UM[1] / sxy))
    zv = sz * (np.arange(-nz, nz + 1) + 0.3)
    model = "vectorial" if case.psf.endswith("vectorial") else "scalar"
    if case.psf.startswith("confocal"):
        h = confocal_kernel(zv, nh, sxy, model=model, phase=(1, 2))
    else:
        opt = OPTICS["widefield"]
        nx = 2 * (nh + 1) * PSF_SUB + 1
        h = _make_psf(zv, nx, sxy / PSF_SUB, opt, opt["em_wvl"], model, 0.0)
        h = h[:, PSF_SUB + 1 :: PSF_SUB, PSF_SUB + 2 :: PSF_SUB][:, : 2 * nh + 1, : 2 * nh + 1]
    rng = np.random.default_rng(seed + 1000)
    counts = rng.poisson(BEAD_PHOTONS * h / h.max() + background) + rng.normal(0.0, read_noise, h.shape)
    return counts.astype(np.float32), (sz, sxy, sxy)


def prepare_bead(d: Path, case: Case, gen: dict) -> Path:
    """The case's bead stack (``bead.tif`` in its cache directory), made once."""
    from deltamic_core.io import write_tiff

    path = d / "bead.tif"
    if not path.exists():
        bead, sp = make_bead(case, **gen)
        tmp = d / "bead.tmp.tif"
        write_tiff(tmp, bead, sp)
        os.replace(tmp, path)
    return path


def fine_factors(spacing):
    return (
        int(math.ceil(spacing[0] / FINE_Z - 1e-9)),
        int(math.ceil(spacing[1] / FINE_XY - 1e-9)),
        int(math.ceil(spacing[2] / FINE_XY - 1e-9)),
    )


def make_image(truth: Truth, case: Case, *, photons, background, read_noise, atten_um, seed):
    from scipy.signal import oaconvolve

    spacing = np.asarray(case.spacing, float)
    extent = truth.verts.max(axis=0) + 3.0
    shape = tuple(int(math.ceil(e / s)) for e, s in zip(extent, spacing))
    m = np.asarray(fine_factors(spacing))
    fs = spacing / m
    # fine sample j of voxel i along an axis sits at i*s + (j - (m-1)/2) * s/m: block centre = i*s
    f_origin = -(m - 1) / (2.0 * m) * spacing
    fshape = tuple(int(n * k) for n, k in zip(shape, m))
    rng = np.random.default_rng(seed)
    p, w = surface_points(truth.verts, truth.faces, truth.dye, POINTS_PER_UM2, rng)
    w = w * np.exp(-(p[:, 0] - p[:, 0].min()) / atten_um)  # depth attenuation
    idx = np.rint((p - f_origin) / fs).astype(np.int64)
    ok = np.all((idx >= 0) & (idx < np.asarray(fshape)), axis=1)
    flat = np.ravel_multi_index(tuple(idx[ok].T), fshape)
    dens = np.bincount(flat, weights=w[ok], minlength=int(np.prod(fshape))).reshape(fshape).astype(np.float32)
    kern = psf_kernel(case.psf, fs).astype(np.float32)
    blurred = oaconvolve(dens, kern, mode="same")
    del dens
    img = blurred.reshape(shape[0], m[0], shape[1], m[1], shape[2], m[2]).mean(axis=(1, 3, 5)).astype(np.float64)
    del blurred
    img = np.clip(img, 0, None)
    img = photons * img / np.percentile(img, 99.9)
    zz, yy, xx = np.meshgrid(*[np.linspace(-0.5, 0.5, n) for n in shape], indexing="ij")
    bg = background * (1.0 + 0.25 * (0.6 * yy + 0.5 * xx - 0.4 * zz) / 0.75)
    counts = rng.poisson(img + bg).astype(np.float64) + rng.normal(0.0, read_noise, shape)
    return (
        counts.astype(np.float32),
        shape,
        {
            "fine_factors": m.tolist(),
            "kernel_shape": list(kern.shape),
            "n_points": int(len(p)),
            "psf_sigma_um": fwhm_sigma(kern, fs),
        },
    )


def fwhm_sigma(kern, fs):
    """FWHM / 2.355 of the PSF along each axis through its peak (what a user measures on a bead)."""
    p = np.unravel_index(int(np.argmax(kern)), kern.shape)
    out = []
    for ax in range(3):
        line = np.moveaxis(kern, ax, 0)[(slice(None),) + tuple(q for a, q in enumerate(p) if a != ax)]
        above = np.nonzero(line >= 0.5 * line.max())[0]
        lo, hi = above[0], above[-1]
        half = 0.5 * line.max()
        left = lo - (line[lo] - half) / (line[lo] - line[lo - 1]) if lo > 0 else lo
        right = hi + (line[hi] - half) / (line[hi] - line[hi + 1]) if hi < len(line) - 1 else hi
        out.append(float((right - left) * fs[ax] / 2.3548))
    return out


# =============================================================================================
# cache
# =============================================================================================
def case_dir(case: Case, gen: dict) -> Path:
    version = GEN_VERSION if case.psf.startswith("confocal") else WIDEFIELD_GEN_VERSION
    key = json.dumps({"case": asdict(case), "gen": gen, "v": version}, sort_keys=True, default=list)
    return RESULTS / f"{case.name}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def prepare(case: Case, gen: dict) -> Path:
    d = case_dir(case, gen)
    if (d / "done").exists():
        return d
    from deltamic_core.io import write_tiff

    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    truth = make_truth(case)
    t1 = time.perf_counter()
    img, shape, info = make_image(truth, case, **gen)
    t2 = time.perf_counter()
    write_tiff(d / "image.tif", img, case.spacing)
    np.savez_compressed(
        d / "truth.npz",
        **{f"v{c}": v for c, (v, f) in truth.cell_of_face.items()},
        **{f"f{c}": f for c, (v, f) in truth.cell_of_face.items()},
    )
    meta = {
        "shape": list(shape),
        "volumes": {str(k): v for k, v in truth.volumes.items()},
        "contacts": [[a, b, s] for (a, b), s in truth.contacts.items()],
        "centroids": {str(k): list(v) for k, v in truth.centroids.items()},
        "info": info,
        "gen_s": [t1 - t0, t2 - t1],
    }
    (d / "truth.json").write_text(json.dumps(meta, indent=1))
    req = {c: (3 * v / (4 * np.pi)) ** (1 / 3) for c, v in truth.volumes.items()}
    for name, with_r in (("seeds_r.csv", True), ("seeds.csv", False)):
        with open(d / name, "w", newline="") as fh:
            wr = csv.writer(fh)
            wr.writerow(["z", "y", "x"] + (["radius"] if with_r else []))
            for c in sorted(truth.centroids):
                row = [f"{x:.4f}" for x in truth.centroids[c]]
                wr.writerow(row + ([f"{0.6 * req[c]:.4f}"] if with_r else []))
    (d / "done").write_text("ok")
    print(f"  [{case.name}] generated {shape} voxels in {t2 - t0:.0f} s ({info})", flush=True)
    return d


def load_truth(d: Path):
    z = np.load(d / "truth.npz")
    meta = json.loads((d / "truth.json").read_text())
    cells = sorted(int(k) for k in meta["volumes"])
    surf = {c: (z[f"v{c}"], z[f"f{c}"]) for c in cells}
    vols = {int(k): v for k, v in meta["volumes"].items()}
    contacts = {(int(a), int(b)): s for a, b, s in meta["contacts"]}
    cents = {int(k): np.asarray(v) for k, v in meta["centroids"].items()}
    return surf, vols, contacts, cents, meta


# =============================================================================================
# metrics: exact point-to-triangle distances
# =============================================================================================
def sample_points(v, f, n, rng):
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = _tri_areas(v, f)
    idx = rng.choice(len(f), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    return (1 - s)[:, None] * a[idx] + (s * (1 - r2))[:, None] * b[idx] + (s * r2)[:, None] * c[idx]


def point_mesh_distance(points, v, f, k=12, chunk=20000):
    """Exact distance from each point to the triangle mesh (v, f).

    The k triangles with the nearest centroids give an upper bound d (exact closest points by
    ``trimesh.triangles.closest_point``); any closer triangle has its centroid within
    d + rmax (rmax = largest centroid-to-corner distance), so points whose k-th centroid is
    nearer than that are re-checked against every centroid in that ball."""
    from scipy.spatial import cKDTree
    from trimesh.triangles import closest_point

    tri = v[f]
    cen = tri.mean(axis=1)
    rmax = float(np.linalg.norm(tri - cen[:, None], axis=2).max())
    tree = cKDTree(cen)
    k = min(k, len(f))
    out = np.empty(len(points))
    for s in range(0, len(points), chunk):
        p = points[s : s + chunk]
        dc, ic = tree.query(p, k=k)
        dc, ic = dc.reshape(len(p), k), ic.reshape(len(p), k)
        cp = closest_point(tri[ic.ravel()], np.repeat(p, k, axis=0))
        d = np.linalg.norm(cp - np.repeat(p, k, axis=0), axis=1).reshape(len(p), k).min(axis=1)
        redo = np.nonzero(dc[:, -1] <= d + rmax)[0]
        for a in range(0, len(redo), 2000):
            sel = redo[a : a + 2000]
            lists = tree.query_ball_point(p[sel], d[sel] + rmax + 1e-9, return_sorted=False)
            counts = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
            cand = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists])
            owner = np.repeat(np.arange(len(sel)), counts)
            dd = np.linalg.norm(closest_point(tri[cand], p[sel][owner]) - p[sel][owner], axis=1)
            best = d[sel].copy()
            np.minimum.at(best, owner, dd)
            d[sel] = best
        out[s : s + chunk] = d
    return out


def surface_metrics(va, fa, vb, fb, n=20000, seed=0):
    rng = np.random.default_rng(seed)
    pa, pb = sample_points(va, fa, n, rng), sample_points(vb, fb, n, rng)
    dab, dba = point_mesh_distance(pa, vb, fb), point_mesh_distance(pb, va, fa)
    return 0.5 * (dab.mean() + dba.mean()), max(np.percentile(dab, 95), np.percentile(dba, 95))


def evaluate(surfaces: dict, volumes: dict, contacts: dict | None, truth, voxel_xy):
    """Table row from a method's per-cell surfaces (um), volumes and contacts."""
    surf, vols, con_true, _, _ = truth
    dists, hds, verr, cerr, lost = [], [], [], [], 0
    pairs = {}
    for c, (v, f) in surf.items():
        if c not in surfaces or len(surfaces[c][1]) == 0:
            lost += 1
            continue
        d, h = surface_metrics(surfaces[c][0], surfaces[c][1], v, f)
        dists.append(d / voxel_xy)
        hds.append(h / voxel_xy)
        verr.append((volumes.get(c, 0.0) / vols[c] - 1.0) * 100)
    for (a, b), s in con_true.items():
        if s < 5.0:
            continue
        got = (contacts or {}).get((a, b), 0.0)
        cerr.append(abs(got / s - 1.0) * 100)
        pairs[f"{a}-{b}"] = [round(s, 1), round(got, 1), round((got / s - 1.0) * 100, 1)]  # truth, got, %
    return {
        "dist_vox": float(np.mean(dists)) if dists else float("nan"),
        "dist_cells": [round(float(x), 3) for x in dists],
        "hd95_vox": float(np.max(hds)) if hds else float("nan"),
        "vol_err_pct": float(np.max(np.abs(verr))) if verr else float("nan"),
        "vol_cells_pct": [round(float(x), 2) for x in verr],  # signed V / V_true - 1 per cell
        "contact_err_pct": float(np.max(cerr)) if cerr else None,
        "contact_pairs": pairs,  # "a-b": [truth um^2, measured um^2, signed error %]
        "lost": lost,
    }


# =============================================================================================
# methods
# =============================================================================================
def watershed_baseline(image, spacing, seeds, radii):
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.measure import marching_cubes
    from skimage.segmentation import watershed

    from deltamic_core.geometry import contacts as mesh_contacts
    from deltamic_core.geometry import meshes_from_labels

    t0 = time.perf_counter()
    spacing = np.asarray(spacing, float)
    smooth = ndi.gaussian_filter(image.astype(np.float64), sigma=1.0)
    # foreground: Otsu on the membranes, closed, holes filled in 3D and plane by plane (a
    # membrane shell with a dim gap is not closed in 3D, its xy sections mostly are)
    fg = ndi.binary_closing(smooth > threshold_otsu(smooth), iterations=2)
    fg = ndi.binary_fill_holes(fg) | np.stack([ndi.binary_fill_holes(sl) for sl in fg])
    bg = ~ndi.binary_dilation(fg, iterations=3)
    grids = np.indices(image.shape, sparse=True)
    seed_d2 = [sum(((g * s - ci) / r) ** 2 for g, s, ci in zip(grids, spacing, c)) for c, r in zip(seeds, radii)]
    for d2 in seed_d2:  # never call background what lies within a seed's radius
        bg &= d2 > 1.0
    markers = np.zeros(image.shape, np.int32)
    markers[bg] = len(seeds) + 1
    for i, d2 in enumerate(seed_d2, start=1):  # seed markers: balls of half the seed radius
        markers[d2 <= 0.25] = i
    labels = watershed(smooth, markers)
    labels[labels == len(seeds) + 1] = 0
    surfaces, vols = {}, {}
    for i in range(1, len(seeds) + 1):
        mask = labels == i
        if not mask.any():
            continue
        v, f, _, _ = marching_cubes(np.pad(mask, 1).astype(np.float32), 0.5, spacing=tuple(spacing))
        surfaces[i] = (v - spacing, f.astype(np.int64))
        vols[i] = float(mask.sum() * np.prod(spacing))
    t_ws = time.perf_counter() - t0
    con = {}
    try:
        sm = meshes_from_labels(labels, tuple(spacing), shared=True)
        cc = mesh_contacts(sm)
        con = {(int(a), int(b)): float(s) for a, b, s in zip(cc["cell_a"], cc["cell_b"], cc["area_um2"])}
    except Exception as exc:  # noqa: BLE001 - report, keep the row
        print(f"    (watershed contacts unavailable: {exc})")
    return surfaces, vols, con, t_ws


def fit_psf_args(case: Case, mode: str, meta: dict) -> list[str]:
    confocal = case.psf.startswith("confocal")
    opt = OPTICS["confocal" if confocal else "widefield"]
    if mode == "measured":  # the bead stack of the same optics (prepare_bead)
        return ["--psf", "measured", str(meta["bead"])]
    if mode == "gaussian":  # Gaussian of the measured bead FWHM, refined (--learn-psf)
        # on 0.5 um voxels the lateral sigma (0.097 um) is below the CLI's floor of 0.25 voxel,
        # which it refuses: use the floor, as its message tells the user to
        sig = [max(s, 0.25 * h) for s, h in zip(meta["info"]["psf_sigma_um"], case.spacing)]
        return ["--psf", "gaussian", "--sigma", *[f"{math.ceil(s * 1e4) / 1e4:.4f}" for s in sig], "--learn-psf"]
    if confocal:
        return [
            "--psf",
            "confocal",
            "--na",
            str(opt["NA"]),
            "--wavelength",
            str(opt["em_wvl"]),
            "--ex-wavelength",
            str(opt["ex_wvl"]),
            "--pinhole-au",
            str(opt["pinhole_au"]),
            "--ni",
            str(opt["ni"]),
            "--ns",
            str(opt["ns"]),
        ]
    return [
        "--psf",
        "gibson-lanni",
        "--na",
        str(opt["NA"]),
        "--wavelength",
        str(opt["em_wvl"]),
        "--ni",
        str(opt["ni"]),
        "--ns",
        str(opt["ns"]),
        *(["--vectorial"] if case.psf.endswith("vectorial") else []),
    ]


# `deltamic fit` with FitConfig fields that have no command-line option overridden (lever
# exploration only: the defaults a user gets are measured through the console script)
_LAUNCH = (
    "import json, sys\n"
    "from deltamic_core.pipeline import job as J\n"
    "over = json.loads(sys.argv.pop(1))\n"
    "if over.pop('voxel_integrated', False):\n"  # detector model: PSF x voxel box (psf/voxel.py)
    "    import deltamic_core.pipeline.run as R\n"
    "    from deltamic_core.psf import VoxelIntegrated\n"
    "    mk = R.make_psf\n"
    "    R.make_psf = lambda spec, spacing: VoxelIntegrated(mk(spec, spacing), spacing)\n"
    "orig = J.FitJob.fit_config\n"
    "def fit_config(self):\n"
    "    self.config = {**self.config, **over}\n"
    "    return orig(self)\n"
    "J.FitJob.fit_config = fit_config\n"
    "from deltamic_core.cli import main\n"
    "sys.exit(main())\n"
)


def run_fit_cli(
    d: Path,
    case: Case,
    mode: str,
    extra: list[str],
    threads: int,
    tag: str,
    meta: dict,
    reuse: bool = False,
    fit_config: dict | None = None,
):
    from deltamic_core.geometry import cell_surface, measure
    from deltamic_core.io import read_mesh

    out = d / f"fit-{tag}"
    exe = Path(sys.executable).with_name("deltamic")  # the console script a user runs
    launcher = (
        [str(exe)] if exe.exists() and not fit_config else [sys.executable, "-c", _LAUNCH, json.dumps(fit_config or {})]
    )
    cmd = [
        *launcher,
        "fit",
        str(d / "image.tif"),
        "--seeds",
        str(d / ("seeds_r.csv" if case.seed_radius else "seeds.csv")),
        "--spacing",
        *[str(s) for s in case.spacing],
        *fit_psf_args(case, mode, meta),
        *extra,
        "--out",
        str(out),
        "--quiet",
    ]
    shown = "deltamic " + " ".join(shlex.quote(c) for c in cmd[len(launcher) :])
    if fit_config:
        shown += f"  [FitConfig overrides {json.dumps(fit_config, sort_keys=True)}]"
    stamp = d / f"fit-{tag}.json"  # command + wall of the last completed fit of this tag
    if reuse and stamp.exists() and (out / "report.json").exists() and json.loads(stamp.read_text())["cmd"] == shown:
        wall = json.loads(stamp.read_text())["wall_s"]
        print(f"    (reusing {out.name}: same command, {wall:.0f} s)")
    else:
        if out.exists():
            import shutil

            shutil.rmtree(out)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not (out / "report.json").exists():
            print(f"    fit failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
            return None, wall, shown
        stamp.write_text(json.dumps({"cmd": shown, "wall_s": wall}))
    mesh = read_mesh(out / "mesh.ply")
    meas = measure(mesh)
    surfaces = {int(c): (lambda s: (s.verts, s.faces))(cell_surface(mesh, int(c))) for c in meas["cell"]}
    vols = {int(c): float(v) for c, v in zip(meas["cell"], meas["volume_um3"])}
    con = meas.contacts
    contacts = {(int(a), int(b)): float(s) for a, b, s in zip(con["cell_a"], con["cell_b"], con["area_um2"])}
    report = json.loads((out / "report.json").read_text())
    return (surfaces, vols, contacts, report), wall, shown


# =============================================================================================
# main
# =============================================================================================
def fmt(x, nd=3):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{nd}f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"one case ({QUICK})")
    ap.add_argument(
        "--tiny",
        action="store_true",
        help=f"the small proxy case {TINY.name} (3 cells of 4 um radius, a few minutes at 1 thread) for exploring levers",
    )
    ap.add_argument("--cases", nargs="+", default=None, help="case names: " + ", ".join(c.name for c in CASES))
    ap.add_argument(
        "--fit-psf",
        choices=("physical", "gaussian", "measured"),
        default="physical",
        help="physical: --psf confocal / gibson-lanni with the true optics; gaussian: "
        "--psf gaussian from the optics + --learn-psf; measured: --psf measured BEAD.tif (a bead "
        "stack of the same optics, 0.125 / 0.083 um samples)",
    )
    ap.add_argument("--fit-args", default="", help="extra `deltamic fit` options, e.g. '--iterations 100'")
    ap.add_argument(
        "--fit-config",
        default=None,
        metavar="JSON",
        help="FitConfig fields without a command-line option, e.g. '{\"rel_tol\": 1e-3}' (lever exploration)",
    )
    ap.add_argument("--tag", default="default", help="name of this fit configuration in the table/JSON")
    ap.add_argument("--no-fit", action="store_true", help="watershed only")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="reuse a finished fit of the same tag and command (its recorded wall time) instead of fitting again",
    )
    ap.add_argument("--fit-only", action="store_true", help="run the fits only (no metrics), e.g. to fill the cache")
    ap.add_argument("--photons", type=float, default=120.0)
    ap.add_argument("--background", type=float, default=8.0)
    ap.add_argument("--read-noise", type=float, default=2.0)
    ap.add_argument("--atten-um", type=float, default=60.0)
    ap.add_argument("--noise-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="append the rows to this JSON file")
    ap.add_argument(
        "--model-matched",
        action="store_true",
        help="also run bench_fit_embryo.py (Gaussian, rendered by the project's own model)",
    )
    ap.add_argument(
        "--kernel-light",
        action="store_true",
        help="print the fraction of the confocal PSF's light that kernel boxes hold (vs a box twice "
        "CONFOCAL_BOX) and exit",
    )
    args = ap.parse_args(argv)
    if args.kernel_light:
        return print_kernel_light()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    names = [TINY.name] if args.tiny else [QUICK] if args.quick else (args.cases or [c.name for c in CASES])
    by_name = {c.name: c for c in CASES + [TINY]}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {sorted(by_name)}")
    gen = {
        "photons": args.photons,
        "background": args.background,
        "read_noise": args.read_noise,
        "atten_um": args.atten_um,
        "seed": args.noise_seed,
    }
    rows = []
    for name in names:
        case = by_name[name]
        d = prepare(case, gen)
        truth = load_truth(d)
        surf, vols, con_true, cents, meta = truth
        from deltamic_core.io import read_image

        image, _ = read_image(d / "image.tif")
        seeds = np.asarray([cents[c] for c in sorted(cents)])
        if case.seed_radius:
            radii = np.asarray([0.6 * (3 * vols[c] / (4 * np.pi)) ** (1 / 3) for c in sorted(vols)])
        else:
            from deltamic_core.pipeline.inputs import estimate_seed_radii

            radii = estimate_seed_radii(image, case.spacing, seeds)
        vxy = case.spacing[1]
        if args.fit_psf == "measured":
            meta["bead"] = prepare_bead(d, case, gen)
        if args.fit_only:
            _, wall, cmd = run_fit_cli(
                d,
                case,
                args.fit_psf,
                shlex.split(args.fit_args),
                args.threads,
                args.tag,
                meta,
                reuse=args.reuse,
                fit_config=json.loads(args.fit_config) if args.fit_config else None,
            )
            print(f"  [{name}] fit {wall:.0f} s: {cmd}", flush=True)
            continue
        ws_s, ws_v, ws_c, t_ws = watershed_baseline(image, case.spacing, seeds, radii)
        ws = evaluate(ws_s, ws_v, ws_c, truth, vxy)
        row = {
            "case": name,
            "shape": meta["shape"],
            "spacing": list(case.spacing),
            "psf": case.psf,
            "cells": len(surf),
            "seed_radius": case.seed_radius,
            "watershed": ws,
            "watershed_s": t_ws,
        }
        if not args.no_fit:
            res, wall, cmd = run_fit_cli(
                d,
                case,
                args.fit_psf,
                shlex.split(args.fit_args),
                args.threads,
                args.tag,
                meta,
                reuse=args.reuse,
                fit_config=json.loads(args.fit_config) if args.fit_config else None,
            )
            row["fit_cmd"] = cmd
            row["fit_s"] = wall
            if res is not None:
                fs, fv, fc, rep = res
                row["fit"] = evaluate(fs, fv, fc, truth, vxy)
                row["fit_iterations"] = rep.get("iterations")
                row["fit_timings"] = rep.get("timings")
        rows.append(row)
        _print_row(row)
    if rows:
        print_table(rows, args)
    if args.model_matched:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import bench_fit_embryo

        t0 = time.perf_counter()
        fit_rows, ws_rows = bench_fit_embryo.main(["--threads", str(args.threads)])
        print(
            f"model-matched (bench_fit_embryo.py, Gaussian render by deltamic_core.render): fit "
            f"{np.mean([r['dist_vox'] for r in fit_rows]):.3f} vs watershed "
            f"{np.mean([r['dist_vox'] for r in ws_rows]):.3f} xy voxels ({time.perf_counter() - t0:.0f} s)"
        )
    if args.json:
        p = Path(args.json)
        old = json.loads(p.read_text()) if p.exists() else []
        old.append(
            {
                "tag": args.tag,
                "fit_psf": args.fit_psf,
                "fit_args": args.fit_args,
                "fit_config": args.fit_config,
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "rows": rows,
            }
        )
        p.write_text(json.dumps(old, indent=1))
    return rows


def print_kernel_light():
    """The light each confocal kernel box holds, relative to a box twice ``CONFOCAL_BOX``, on the
    0.5 / 0.25 um cases' fine grid."""
    fs = np.asarray(CASES[0].spacing) / np.asarray(fine_factors(CASES[0].spacing))
    boxes = [(1.6, 0.75), (3.2, 1.5), (5.0, 3.0), (6.4, 3.0), (8.0, 4.0), CONFOCAL_BOX, (15.0, 7.5)]
    ref = tuple(2 * b for b in CONFOCAL_BOX)
    out = {}
    for kind in ("confocal-vectorial", "confocal-scalar"):
        t0 = time.perf_counter()
        out[kind] = kernel_light(kind, fs, boxes, ref)
        print(f"{kind}: reference box +-{ref[0]:g} / +-{ref[1]:g} um computed in {time.perf_counter() - t0:.0f} s")
        for (bz, bxy), f in zip(boxes, out[kind]):
            print(f"  +-{bz:g} / +-{bxy:g} um: {100 * f:.2f}%")
    return out


def _print_row(r):
    ws = r["watershed"]
    line = f"  [{r['case']}] watershed {fmt(ws['dist_vox'])} vox, vol % per cell {ws['vol_cells_pct']} ({r['watershed_s']:.1f} s)"
    if "fit" in r:
        f = r["fit"]
        line += f" | fit {fmt(f['dist_vox'])} vox per cell {f['dist_cells']}, vol % {f['vol_cells_pct']} ({r['fit_s']:.0f} s)"
    print(line, flush=True)
    fc = r.get("fit", {}).get("contact_pairs", {})
    for pair, (true, got, pct) in ws.get("contact_pairs", {}).items():
        fit = f"fit {fc[pair][1]:.1f} ({fc[pair][2]:+.1f}%)" if pair in fc else "fit -"
        print(f"      contact {pair}: truth {true:.1f} um^2, watershed {got:.1f} ({pct:+.1f}%), {fit}", flush=True)


def print_table(rows, args):
    print(f"\nfit: `deltamic fit IMAGE --seeds CSV` + PSF '{args.fit_psf}' {args.fit_args}  [{args.tag}]")
    hdr = (
        "case",
        "voxels",
        "psf",
        "seeds",
        "method",
        "mean d",
        "HD95",
        "vol err",
        "contact",
        "wall",
        "d ratio",
        "t ratio",
    )
    print(" | ".join(hdr))
    print(" | ".join("---" for _ in hdr))
    for r in rows:
        ws = r["watershed"]
        sz = "x".join(str(n) for n in r["shape"]) + f" @{r['spacing'][0]}/{r['spacing'][1]}"
        seeds = "c+r" if r["seed_radius"] else "c"
        print(
            " | ".join(
                [
                    r["case"],
                    sz,
                    r["psf"],
                    seeds,
                    "watershed",
                    fmt(ws["dist_vox"]),
                    fmt(ws["hd95_vox"], 2),
                    fmt(ws["vol_err_pct"], 2) + "%",
                    fmt(ws["contact_err_pct"], 1) + "%",
                    f"{r['watershed_s']:.1f} s",
                    "1",
                    "1",
                ]
            )
        )
        if "fit" in r:
            f = r["fit"]
            print(
                " | ".join(
                    [
                        "",
                        "",
                        "",
                        "",
                        "deltamic fit",
                        fmt(f["dist_vox"]),
                        fmt(f["hd95_vox"], 2),
                        fmt(f["vol_err_pct"], 2) + "%",
                        fmt(f["contact_err_pct"], 1) + "%",
                        f"{r['fit_s']:.0f} s",
                        fmt(f["dist_vox"] / ws["dist_vox"], 2),
                        f"{r['fit_s'] / max(r['watershed_s'], 1e-9):.0f}",
                    ]
                )
            )
        elif "fit_s" in r:
            print(" | ".join(["", "", "", "", "deltamic fit", "failed", "", "", "", f"{r['fit_s']:.0f} s", "", ""]))
    print(
        "\n(distances in xy voxels; vol err = worst cell |V/V_true - 1|; contact = worst contact |A/A_true - 1| "
        "over contacts > 5 um^2; d ratio = fit / watershed mean distance (target <= 0.33); t ratio = fit / "
        "watershed wall (target <= 10); fit wall = `deltamic fit` subprocess incl. start-up)"
    )


if __name__ == "__main__":
    main()
