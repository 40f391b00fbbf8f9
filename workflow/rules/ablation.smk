# The paper's ablations as targets: `snakemake ablation_k` (Table 1, k² score maps) and
# `snakemake ablation_head` (Table 2, InstanceFCN vs ~DeepMask, crop vs full-image training).
# A variant is the run's config with a few keys overridden, written to its folder
# results/<run>/ablation/<variant>/config.yaml (`run_config_file`); the train, infer, nms and
# evaluate rules serve that folder as they serve the run's own. A variant equal to the run reuses
# the run's val/ar.json; variants equal to each other share one folder (ifcn.variants).


for table in TABLES:

    rule:
        name:
            f"ablation_{table}"
        input:
            ar=[ABLATIONS.ar_files[name] for name in TABLES[table]],
        output:
            table=report(
                result(f"ablation_{table}.csv"),
                caption="../report/ablation.rst",
                category="Ablations",
                labels={"table": table, "kind": "AR table"},
            ),
            plot=report(
                result(f"ablation_{table}.png"),
                caption="../report/ablation.rst",
                category="Ablations",
                labels={"table": table, "kind": "recall vs IoU"},
            ),
        log:
            log_file(f"ablation_{table}"),
        benchmark:
            benchmark_file(f"ablation_{table}")
        conda:
            "../../environment.yml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        params:
            variants=list(TABLES[table]),
        shell:
            "ifcn ablation table --ar {input.ar:q} --variants {params.variants:q}"
            " --plot {output.plot:q} --out {output.table:q} > {log:q} 2>&1"
