"""What the detector-stage benchmarks share: the command-line arguments naming the data, the
net and a DETDIR's caches, and a Detector whose fc6/fc7 are the classification net's (no
fine-tuning, so a stage runs at once) with the first N training images prepared from the
DETDIR's proposal and conv5 caches (computed where missing)."""
import nets
from minispp.data.voc import VOCDataset
from train.detection.detector import Detector, svm_C_for
from train.detection.windows import prepare_images


def add_arguments(ap):
    ap.add_argument("--voc", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--work", required=True, help="a DETDIR whose proposal and conv5 caches to use")
    ap.add_argument("--limit", type=int, required=True)


def detector_and_images(a):
    """(det, images, conv) for the parsed arguments `a`; det's SVM C is set for the images."""
    model = nets.load(a.checkpoint)
    for p in model.params.values():
        p.state = {}                     # no training state: the stages run forward only
    ds = VOCDataset(a.voc, "trainval")
    det = Detector(model, ds.classes, {})
    det.init_head_from_model()
    images, conv = prepare_images(ds, a.work, det, False, a.limit)
    det.config["svm_C"] = svm_C_for(len(images))
    return det, images, conv
