# Datasets: everything downstream reads a COCO instances JSON and an image folder. What each
# dataset downloads and how each split converts is the dataset registry's (ifcn.data.datasets).


if DATASET.format is None:

    rule synth:
        input:
            config=run_config_file,
        output:
            train=DATA["train_json"],
            val=DATA["val_json"],
        log:
            log_file("synth"),
        benchmark:
            benchmark_file("synth")
        conda:
            "../../environment.yml"
        threads: 2
        resources:
            mem_mb=2000,
            runtime=20,
        params:
            root=parent_of_output("train"),
            settings=settings("data.synth"),
        shell:
            "ifcn data synth --config {input.config:q} --out {params.root:q}"
            " --workers {threads} > {log:q} 2>&1"

else:

    # Downloads need the internet, which cluster compute nodes often lack: they run where
    # Snakemake runs.
    localrules:
        download,

    rule download:
        input:
            config=run_config_file,
        output:
            touch(download_flag("{name}")),
        log:
            log_file("download_{name}"),
        benchmark:
            benchmark_file("download_{name}")
        conda:
            "../../environment.yml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=600,
        shell:
            "ifcn data download --config {input.config:q} --dataset {wildcards.name:q}"
            " > {log:q} 2>&1"

    for split in ("train", "val"):

        rule:
            name:
                f"convert_{split}"
            input:
                downloads=[download_flag(name) for name in DATASET.downloads],
                config=run_config_file,
            output:
                DATA[f"{split}_json"],
            log:
                log_file(f"convert_{split}"),
            benchmark:
                benchmark_file(f"convert_{split}")
            conda:
                "../../environment.yml"
            threads: 4
            resources:
                mem_mb=16000,
                runtime=240,
            params:
                split=split,
                settings=config_json(convert_request(DATA, split)),
            shell:
                "ifcn data convert --config {input.config:q} --split {params.split:q}"
                " --workers {threads} --out {output:q} > {log:q} 2>&1"
