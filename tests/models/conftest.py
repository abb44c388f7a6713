"""The markers that Transformers' common tests (tests/upstream) put on their tests, as upstream's conftest does."""

UPSTREAM_MARKERS = ("accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test",
                    "torch_compile_test", "torch_export_test", "generate", "is_pipeline_test", "is_staging_test")  # fmt: skip


def pytest_configure(config):
    for marker in UPSTREAM_MARKERS:
        config.addinivalue_line("markers", f"{marker}: a marker of Transformers' common tests")
