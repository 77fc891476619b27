"""The demo cohort: seeded CT-like phantoms written as real DICOM series and NIfTI files.

``make_demo_cohort`` writes a cohort that looks like a PACS export: abdominal CT volumes with a body
outline, fat, muscle, liver, spleen, kidneys, vessels, spine, ribs, lung bases and bowel gas, smooth
intensity inhomogeneity and correlated noise. Positive patients carry one or two soft-edged lesions
(liver by default; kidney or spleen on request) whose size, contrast and position vary. Three sites
differ in noise, slice spacing, DICOM storage conventions and file naming; some patients have a
follow-up scan. A ``CohortSpec`` holds the cohort-level knobs; the same spec gives the same bytes.
Nothing here imports torch or MONAI.

Modules, in dependency order: ``geometry`` (points, ellipsoids, pose, scan affines), ``anatomy``
(one patient's body and its seeded draws), ``paint`` (HU and tissue labels of an anatomy),
``lesions`` (lesion placement), ``phantom`` (one volume from a ``PhantomSpec``), ``dicom`` and
``nifti`` (writers; ``SeriesSpec`` describes a DICOM series) and ``cohort`` (sites, plans, the
cohort folder and its manifest). Everything public is re-exported here.

Conventions
-----------
A volume is an ``(X, Y, Z)`` array indexed ``(i, j, k)``; its affine maps the voxel index
``(i, j, k, 1)`` to RAS+ millimetres (x towards the patient's right, y anterior, z superior), as in
NIfTI. DICOM uses LPS, so ``lps = diag(-1, -1, 1) @ ras``. In a DICOM slice, ``i`` is the column index
(along the first IOP vector, spacing ``PixelSpacing[1]``) and ``j`` the row index (second IOP vector,
spacing ``PixelSpacing[0]``), so ``pixel_array == volume[:, :, k].T``. Anatomy lives in patient RAS
coordinates (origin: the body centre at the upper-abdominal reference level); a ``Pose`` places the
patient in the scanner, and the scan affine maps voxels to scanner RAS mm.
"""

from pipeline.synthetic.anatomy import Anatomy, followup_anatomy, random_anatomy
from pipeline.synthetic.cohort import (
    AGE,
    FORMAT,
    MANIFEST_COLUMNS,
    SCANNER,
    SEX,
    SITE,
    SITES,
    VISIT,
    CohortSpec,
    ScanPlan,
    SiteProfile,
    make_demo_cohort,
    plan_cohort,
    render_scan,
    write_scan,
)
from pipeline.synthetic.dicom import IDENTIFYING_TAGS, SeriesSpec, fake_identity, seeded_uid, write_dicom_series
from pipeline.synthetic.geometry import (
    ORIENTATIONS,
    Ellipsoid,
    FloatArray,
    Points,
    Pose,
    Vec3,
    scan_affine,
    voxel_centers,
)
from pipeline.synthetic.lesions import (
    LESION_CONTRAST_HU,
    LESION_COUNT,
    LESION_ORGANS,
    LESION_RADIUS_MM,
    LesionSpec,
    followup_lesion,
    random_lesion,
    random_lesions,
)
from pipeline.synthetic.nifti import write_nifti
from pipeline.synthetic.paint import (
    AIR,
    BONE,
    COUCH,
    FAT,
    GAS,
    HEART,
    KIDNEY,
    LESION,
    LIVER,
    LUNG,
    MUSCLE,
    SOFT,
    SPLEEN,
    STOMACH,
    VESSEL,
)
from pipeline.synthetic.phantom import PhantomSpec, make_phantom

__all__ = [
    "AGE", "AIR", "BONE", "COUCH", "FAT", "FORMAT", "GAS", "HEART", "IDENTIFYING_TAGS", "KIDNEY",
    "LESION", "LESION_CONTRAST_HU", "LESION_COUNT", "LESION_ORGANS", "LESION_RADIUS_MM", "LIVER",
    "LUNG", "MANIFEST_COLUMNS", "MUSCLE", "ORIENTATIONS", "SCANNER", "SEX", "SITE", "SITES", "SOFT",
    "SPLEEN", "STOMACH", "VESSEL", "VISIT", "Anatomy", "CohortSpec", "Ellipsoid", "FloatArray",
    "LesionSpec", "PhantomSpec", "Points", "Pose", "ScanPlan", "SeriesSpec", "SiteProfile", "Vec3",
    "fake_identity", "followup_anatomy", "followup_lesion", "make_demo_cohort", "make_phantom",
    "plan_cohort", "random_anatomy", "random_lesion", "random_lesions", "render_scan", "scan_affine",
    "seeded_uid", "voxel_centers", "write_dicom_series", "write_nifti", "write_scan",
]  # fmt: skip
