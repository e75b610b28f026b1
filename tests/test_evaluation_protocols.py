"""IJB templates (synthetic IJB_release tree), rank-k identification and RFW bias, with hand-checked answers."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
from PIL import Image

from ghostface_keras.core.errors import DataError
from ghostface_keras.evaluation import bias, identification, ijb

TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                         [70.7299, 92.2041]])


# --------------------------------------------------------------------------------------------------
# IJB
# --------------------------------------------------------------------------------------------------
def channel_model(inputs: np.ndarray) -> np.ndarray:
    """A stand-in "model": the embedding of an image is its mean (R, G) in pixel units.

    Mirroring a constant image changes nothing, so flip TTA only doubles the vector.
    """
    pixels = np.asarray(inputs) * 128.0 + 127.5
    return pixels.mean(axis=(1, 2))[:, :2]


def identity_aligner(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    assert np.allclose(landmarks, TEMPLATE_112)
    return image


# image: (R, G), detector score, template, media.  Hand computation, scenario N0D1F1:
#   T1: media 1 = mean(1.0*(200,0), 0.5*(0,200)) = (100, 50); media 2 = (0, 100); sum (100, 150) -> (2, 3)/sqrt(13)
#   T2: 0.5*(100, 0) -> (1, 0)          T3: (0, 50) -> (0, 1)          T4: (60, 60) -> (1, 1)/sqrt(2)
IMAGES = [("1.jpg", (200, 0), 1.0, 1, 1), ("2.jpg", (0, 200), 0.5, 1, 1), ("3.jpg", (0, 100), 1.0, 1, 2),
          ("4.jpg", (100, 0), 0.5, 2, 3), ("5.jpg", (0, 50), 1.0, 3, 4), ("6.jpg", (60, 60), 0.9, 4, 5)]
PAIRS = [(1, 2, 1), (1, 3, 0), (2, 3, 0), (3, 4, 1), (2, 4, 0)]
T1 = np.array([2.0, 3.0]) / np.sqrt(13)
T2, T3, T4 = np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([1.0, 1.0]) / np.sqrt(2)
EXPECTED_SCORES = [T1 @ T2, T1 @ T3, T2 @ T3, T3 @ T4, T2 @ T4]  # 0.5547, 0.8321, 0, 0.7071, 0.7071


def write_ijb_tree(root, subset="IJBC", landmark_offset=(0.0, 0.0), crop=112):
    folder = root / subset
    (folder / "loose_crop").mkdir(parents=True)
    (folder / "meta").mkdir()
    lower = subset.lower()
    landmark_lines, media_lines = [], []
    for name, (red, green), score, template, media in IMAGES:
        pixels = np.zeros((crop, crop, 3), np.uint8)
        pixels[..., 0], pixels[..., 1] = red, green
        Image.fromarray(pixels).save(folder / "loose_crop" / name, format="PNG")  # lossless, whatever the name
        points = " ".join(f"{value:.4f}" for value in (TEMPLATE_112 + landmark_offset).reshape(-1))
        landmark_lines.append(f"{name} {points} {score}")
        media_lines.append(f"{name} {template} {media}")
    (folder / "meta" / f"{lower}_name_5pts_score.txt").write_text("\n".join(landmark_lines) + "\n")
    (folder / "meta" / f"{lower}_face_tid_mid.txt").write_text("\n".join(media_lines) + "\n")
    (folder / "meta" / f"{lower}_template_pair_label.txt").write_text(
        "\n".join(f"{a} {b} {label}" for a, b, label in PAIRS) + "\n")
    galleries = ijb.GALLERY_NAMES[subset]
    # gallery 1: T2 (subject 10), T3 (subject 20); gallery 2: T4 (subject 30). Probe T1 is subject 20.
    (folder / "meta" / f"{lower}_1N_gallery_{galleries[0]}.csv").write_text(
        "TEMPLATE_ID,SUBJECT_ID,FILENAME\n2,10,4.jpg\n3,20,5.jpg\n")
    (folder / "meta" / f"{lower}_1N_gallery_{galleries[1]}.csv").write_text("TEMPLATE_ID,SUBJECT_ID\n4,30\n")
    (folder / "meta" / f"{lower}_1N_probe_mixed.csv").write_text("TEMPLATE_ID,SUBJECT_ID\n1,20\n1,20\n")
    return folder


def test_ijb_template_scores_match_hand_computation(tmp_path):
    write_ijb_tree(tmp_path)
    result = ijb.evaluate_ijb(channel_model, tmp_path, "IJBC", batch_size=4, aligner=identity_aligner,
                              progress=False, identification=True)
    np.testing.assert_array_equal(result.template_ids, [1, 2, 3, 4])
    np.testing.assert_allclose(result.template_features, np.stack([T1, T2, T3, T4]), atol=1e-6)
    scores = ijb.template_pair_scores(result.template_ids, result.template_features, np.array(PAIRS)[:, :2])
    np.testing.assert_allclose(scores, EXPECTED_SCORES, atol=1e-6)
    # genuine 0.5547, 0.7071 vs impostor 0.8321, 0, 0.7071 (a tie): P(genuine > impostor) = (1 + 1.5) / 6
    assert result.verification.auc == pytest.approx(2.5 / 6)
    assert result.verification.pairs == 5 and result.verification.record()["accuracy"] is None
    # probe T1 (subject 20): cosine 0.8321 to T3 (subject 20, right), 0.5547 to T2 -> rank 1 in gallery G1
    one_to_n = result.identification
    assert one_to_n["top_1"] == 1.0 and one_to_n["galleries"]["G1"]["mated"] == 1
    assert one_to_n["galleries"]["G2"]["non_mated"] == 1


def test_ijb_without_score_weighting_changes_template_one(tmp_path):
    write_ijb_tree(tmp_path, subset="IJBB")
    result = ijb.evaluate_ijb(channel_model, tmp_path / "IJBB", "IJBB", batch_size=4, aligner=identity_aligner,
                              progress=False, score_weighting=False)
    # media 1 = (100, 100), media 2 = (0, 100): sum (100, 200) -> (1, 2)/sqrt(5)
    np.testing.assert_allclose(result.template_features[0], np.array([1.0, 2.0]) / np.sqrt(5), atol=1e-6)


def test_ijb_default_aligner_warps_loose_crops(tmp_path):
    pytest.importorskip("ghostface_keras.faces")
    write_ijb_tree(tmp_path, landmark_offset=(10.0, 20.0), crop=150)
    meta = ijb.read_ijb_meta(tmp_path, "IJBC")
    batch = next(ijb.aligned_batches(meta, batch_size=6))
    assert batch.shape == (6, 112, 112, 3)
    np.testing.assert_array_equal(batch[0, 20:90, 20:90, 0], 200)  # a pure shift of a constant crop


def test_ijb_pooling_against_loop_reference():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 6))
    templates, medias = rng.integers(0, 5, 40), rng.integers(0, 3, 40)
    ids, pooled = ijb.template_features(features, templates, medias)
    for row, template in enumerate(ids):
        media_means = [features[(templates == template) & (medias == media)].mean(axis=0)
                       for media in np.unique(medias[templates == template])]
        expected = np.sum(media_means, axis=0)
        np.testing.assert_allclose(pooled[row], expected / np.linalg.norm(expected), atol=1e-6)


def test_tpir_at_fpir_against_direct_count():
    rng = np.random.default_rng(1)
    gallery = rng.normal(size=(20, 8))
    gallery_subjects = np.arange(20)
    probe_subjects = np.r_[rng.integers(0, 20, 300), np.arange(100, 400)]  # 300 mated, 300 non-mated
    probes = rng.normal(size=(600, 8))
    probes[:300] += 1.5 * gallery[probe_subjects[:300]]
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    result = ijb.open_set_identification(unit(gallery), gallery_subjects, unit(probes), probe_subjects)
    similarity = unit(probes) @ unit(gallery).T
    best_non_mated = np.sort(similarity[300:].max(axis=1))[::-1]
    for fpir in (0.01, 0.1, 1.0):
        threshold = best_non_mated[max(int(300 * fpir) - 1, 0)]
        rank_one = similarity[:300].argmax(axis=1) == probe_subjects[:300]
        true_scores = similarity[np.arange(300), probe_subjects[:300]]
        assert result["tpir"][f"{fpir:.0e}"] == pytest.approx(np.mean(rank_one & (true_scores > threshold)))
    assert result["hits_at_1"] == int(np.sum(similarity[:300].argmax(axis=1) == probe_subjects[:300]))


def test_ijb_metadata_errors_name_the_file(tmp_path):
    folder = write_ijb_tree(tmp_path)
    (folder / "meta" / "ijbc_face_tid_mid.txt").write_text("9.jpg 1 1\n")
    with pytest.raises(DataError, match="ijbc_face_tid_mid.txt"):
        ijb.read_ijb_meta(tmp_path, "IJBC")
    with pytest.raises(DataError, match="no IJBB/meta"):
        ijb.read_ijb_meta(tmp_path / "nowhere", "IJBB")


# --------------------------------------------------------------------------------------------------
# Identification
# --------------------------------------------------------------------------------------------------
def _loop_cmc(gallery, gallery_labels, probes, probe_labels, k, exclude_self=False):
    hits = total = 0
    for index, (probe, label) in enumerate(zip(probes, probe_labels)):
        best = {}
        for row, (item, item_label) in enumerate(zip(gallery, gallery_labels)):
            if exclude_self and row == index:
                continue
            cosine = item @ probe / np.linalg.norm(item) / np.linalg.norm(probe)
            best[item_label] = max(best.get(item_label, -2.0), cosine)
        if label not in best:
            continue
        total += 1
        hits += sum(score >= best[label] for score in best.values()) <= k
    return hits / total


def test_rank_k_matches_loop_reference():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(15, 10))
    gallery_labels = np.repeat(np.arange(15), 2)
    gallery = centres[gallery_labels] + rng.normal(scale=1.0, size=(30, 10))
    probe_labels = np.r_[rng.integers(0, 15, 40), [99, 98]]  # two unenrolled probes are left out
    probes = np.r_[centres[probe_labels[:40]], np.zeros((2, 10))] + rng.normal(scale=1.0, size=(42, 10))
    result = identification.rank_k_identification(gallery, gallery_labels, probes, probe_labels, ranks=(1, 5))
    assert result["probes"] == 40
    for k in (1, 5):
        assert result[f"rank_{k}"] == pytest.approx(_loop_cmc(gallery, gallery_labels, probes, probe_labels, k))


def test_leave_one_out_never_matches_the_probe_itself():
    rng = np.random.default_rng(3)
    labels = np.r_[np.repeat(np.arange(8), 3), [50]]  # identity 50 has one image: never a probe
    embeddings = rng.normal(size=(len(labels), 6))
    result = identification.leave_one_out_identification(embeddings, labels, ranks=(1, 3))
    assert result["probes"] == 24
    for k in (1, 3):
        expected = _loop_cmc(embeddings, labels, embeddings[:24], labels[:24], k, exclude_self=True)
        assert result[f"rank_{k}"] == pytest.approx(expected)


def test_folder_listing_reads_grey_and_odd_sizes(tmp_path):
    for person, shade in (("b", 40), ("a", 200)):
        (tmp_path / person).mkdir()
        for index in range(2):
            Image.fromarray(np.full((112, 92), shade + index, np.uint8)).save(tmp_path / person / f"{index}.pgm")
    paths, labels, names = identification.list_identity_folder(tmp_path)
    assert names == ["a", "b"] and labels.tolist() == [0, 0, 1, 1]
    images = identification.read_face_images(paths)
    assert images.shape == (4, 112, 112, 3) and images[0, 50, 50].tolist() == [200, 200, 200]


def test_all_pair_scores_against_itertools():
    import itertools

    rng = np.random.default_rng(4)
    embeddings, labels = rng.normal(size=(9, 4)), np.array([0, 0, 1, 1, 1, 2, 2, 3, 3])
    scores, same = identification.all_pair_scores(embeddings, labels)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    pairs = list(itertools.combinations(range(9), 2))
    genuine = sorted(unit[i] @ unit[j] for i, j in pairs if labels[i] == labels[j])
    impostor = sorted(unit[i] @ unit[j] for i, j in pairs if labels[i] != labels[j])
    np.testing.assert_allclose(sorted(scores[same]), genuine, atol=1e-6)
    np.testing.assert_allclose(sorted(scores[~same]), impostor, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# RFW bias
# --------------------------------------------------------------------------------------------------
def test_rfw_summary_on_published_arcface_accuracies():
    # ArcFace on RFW (Wang et al.): Caucasian 92.15, Indian 88.00, Asian 83.98, African 84.93
    groups = {"Caucasian": 0.9215, "Indian": 0.8800, "Asian": 0.8398, "African": 0.8493}
    summary = bias.rfw_summary(groups)
    assert summary["mean"] == pytest.approx(statistics.mean(groups.values()))
    assert summary["std"] == pytest.approx(statistics.stdev(groups.values()))
    assert summary["ser"] == pytest.approx((1 - 0.8398) / (1 - 0.9215))  # 2.04
    assert round(100 * summary["std"], 2) == 3.68  # as the RFW bias tables print it


def test_rfw_bins_are_found_by_group_name(tmp_path):
    for name in ("African_test.bin", "asian_test.bin", "Caucasian.bin", "INDIAN_pairs.bin", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    found = bias.find_rfw_bins(tmp_path)
    assert [path.name for path in found.values()] == ["African_test.bin", "asian_test.bin", "Caucasian.bin",
                                                      "INDIAN_pairs.bin"]
    (tmp_path / "Caucasian.bin").unlink()
    with pytest.raises(DataError, match="Caucasian"):
        bias.find_rfw_bins(tmp_path)


def test_gallery_probe_with_distractor_hand_checked(tmp_path):
    def colour(folder, name, red, green):
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.zeros((112, 112, 3), np.uint8)
        pixels[..., 0], pixels[..., 1] = red, green
        Image.fromarray(pixels).save(folder / name)

    colour(tmp_path / "gallery" / "A", "1.png", 200, 0)
    colour(tmp_path / "gallery" / "B", "1.png", 0, 200)
    colour(tmp_path / "probe" / "A", "1.png", 180, 20)  # cos to A 0.994: rank 1
    colour(tmp_path / "probe" / "B", "1.png", 100, 90)  # distractor 0.998 > A 0.743 > B 0.669: rank 3
    colour(tmp_path / "distractors" / "x", "1.png", 150, 150)
    record = identification.evaluate_gallery_probe(channel_model, tmp_path / "gallery", tmp_path / "probe",
                                                   tmp_path / "distractors", ranks=(1, 2, 3), progress=False)
    assert (record["rank_1"], record["rank_2"], record["rank_3"]) == (0.5, 0.5, 1.0)
    assert record["gallery"] == 3 and record["identities"] == 3
